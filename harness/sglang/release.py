"""SGLang releases as kernel sources: fetch, cache, locate and load a release's EP-MoE kernels.

``resolve("0.4.10.post2")`` downloads the release wheel with pip (``--no-deps --only-binary
:all:``; the registry is the only network the harness ever touches, and only for a
``sglang==VERSION`` source), keeps the wheel and the extracted kernel file(s) in the cache
folder ``cache_root()/VERSION`` and returns a ``Release`` that names the extracted kernel file.
``cache_root()`` is ``$MOE_HARNESS_SGLANG_CACHE`` when set (the folder holding the VERSION
folders), else ``$XDG_CACHE_HOME/moe-kernel-harness/sglang`` (``~/.cache`` when
XDG_CACHE_HOME is unset).

A cache folder is ``release.json`` (version, wheel name and sha256, the extracted paths,
the kernel path) and ``files/`` (the extracted files), plus the wheel. Only ``release.json``
and ``files/`` are read to load a release, so a *slim* cache without the wheels works
offline: ``export_slim_cache(versions, dest)`` copies them (tens of kB per release, where
the wheels are up to 40 MB) for a machine without an index (``moe-harness releases
--export-cache DIR``; there, ``MOE_HARNESS_SGLANG_CACHE=DIR``). A slim release's
``Release.wheel`` is None.
``resolve(wheel="path/to/sglang-V-....whl")`` does the same from a wheel on disk, for
machines without an index (carry the wheel; it is registered in the cache under its
version, so a later ``sglang==V`` on that machine finds it without pip).

Beside it, the neighbour files of ``NEIGHBOUR_PATHS`` (0.5.23's fp8 quantiser module) are extracted
and loaded the same way (``load_neighbours``); the binding looks in them for names the kernel
file lacks. A cache folder extracted for other paths is redone from its cached wheel.

The kernel file is found by the paths releases used (``KERNEL_PATHS``, newest first):

==========================================  ===================
path inside the wheel                        releases
==========================================  ===================
``sglang/kernels/ops/moe/ep_moe_kernels.py``  0.5.16 and later
``sglang/srt/layers/moe/ep_moe/kernels.py``   0.4.1 .. 0.5.15 (0.4.0 has none)
==========================================  ===================

``load_kernel_file(path)`` executes a file UNMODIFIED as a module whose ``sglang.*``
imports are served by ``harness.sglang.standins`` (they take precedence over an installed
sglang; an import they do not cover goes to an installed sglang, else fails naming it).
``sglang:PATH`` sources go through the same loader.

Errors are ``ReleaseError`` (a RuntimeError) naming the version or the wheel and what was
expected; a failed download suggests ``--sglang-wheel``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from ..loader import load_module
from .standins import scoped_builtins

# Where releases kept the EP-MoE kernel file, newest layout first (the first present wins).
KERNEL_PATHS: Tuple[str, ...] = (
    "sglang/kernels/ops/moe/ep_moe_kernels.py",   # 0.5.16 ..
    "sglang/srt/layers/moe/ep_moe/kernels.py",    # 0.4.1 .. 0.5.15
)
# Read by tools/sglang_inventory.py only (how the EP layer launched the kernels); never loaded.
LAYER_PATHS: Tuple[str, ...] = ("sglang/srt/layers/moe/ep_moe/layer.py",)
# Neighbour files of the kernel file that define ops the harness checks, loaded the same way
# (unmodified, sglang.* imports from harness.sglang.standins) when a release has them; the
# binding looks up an op's names in the kernel file first, then in these, in order.
NEIGHBOUR_PATHS: Tuple[str, ...] = (
    "sglang/kernels/ops/quantization/fp8_kernel.py",   # 0.5.16 ..: the per-token-group fp8 quantiser
)
# Every path a cache folder is extracted for: a folder extracted for another list is redone from its wheel.
EXTRACTED_PATHS: Tuple[str, ...] = KERNEL_PATHS + LAYER_PATHS + NEIGHBOUR_PATHS

PACKAGE = "sglang"
DOWNLOAD_TIMEOUT_S = 600.0
# A release version as it may appear in a cache folder's name (PEP 440 subset: no local part).
_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?$")
# A wheel file name (PEP 427): name-version(-build)?-python-abi-platform.whl
_WHEEL_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)(-[0-9][^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")
_RECORD = "release.json"
# A fallback target for pip when no wheel matches this interpreter (a newer release may
# ship only builds for other Pythons): the kernel files are the same plain Python in every
# build of a release (checked for 0.5.23's cp311 and cp312 builds).
FALLBACK_TARGET = ("--platform", "manylinux_2_34_x86_64", "--python-version", "3.12", "--implementation", "cp",
                   "--abi", "cp312")


class ReleaseError(RuntimeError):
    """A release could not be fetched, read or located (the message says which and why)."""


@dataclass(frozen=True)
class Release:
    """One SGLang release's kernel files, extracted into the cache.

    version: the release version (from the wheel's file name); folder: the cache folder;
    wheel: the cached wheel (None in a slim cache, which keeps only the extracted files);
    files: path inside the wheel -> extracted local file, for the paths of KERNEL_PATHS (and
    LAYER_PATHS) that the wheel has; kernel_path: the first of KERNEL_PATHS present (the
    EP-MoE kernel file)."""

    version: str
    folder: Path
    wheel: Optional[Path]
    files: Dict[str, Path]
    kernel_path: str

    @property
    def kernel_file(self) -> Path:
        return self.files[self.kernel_path]

    @property
    def neighbour_files(self) -> Dict[str, Path]:
        """The NEIGHBOUR_PATHS this release has: path inside the wheel -> extracted file."""
        return {p: self.files[p] for p in NEIGHBOUR_PATHS if p in self.files}

    @property
    def source(self) -> str:
        return f"sglang=={self.version}"


def check_version(version: str) -> str:
    """The version string, stripped; ValueError unless it looks like a release version."""
    v = (version or "").strip()
    if not _VERSION_RE.match(v):
        raise ValueError(f"sglang=={version}: expected a release version such as 0.4.10.post2 or 0.5.23")
    return v


CACHE_ENV = "MOE_HARNESS_SGLANG_CACHE"


def cache_root() -> Path:
    """``$MOE_HARNESS_SGLANG_CACHE`` when set (a folder of VERSION folders, e.g. a carried slim
    cache), else ``$XDG_CACHE_HOME/moe-kernel-harness/sglang`` (``~/.cache`` when
    XDG_CACHE_HOME is unset)."""
    own = os.environ.get(CACHE_ENV)
    if own:
        return Path(os.path.expanduser(own))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "moe-kernel-harness" / "sglang"


def wheel_version(wheel: os.PathLike) -> str:
    """The version in an sglang wheel's file name; ReleaseError for any other file."""
    name = os.path.basename(os.fspath(wheel))
    m = _WHEEL_RE.match(name)
    if not m or m.group("name").lower() != PACKAGE:
        raise ReleaseError(f"--sglang-wheel {wheel}: expected an sglang wheel file named "
                           f"sglang-VERSION-PYTHON-ABI-PLATFORM.whl, got {name!r}")
    try:
        return check_version(m.group("version"))
    except ValueError as exc:
        raise ReleaseError(f"--sglang-wheel {wheel}: {exc}") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_kernel_path(names: Sequence[str]) -> Optional[str]:
    """The first of KERNEL_PATHS among ``names`` (paths inside a wheel), or None."""
    present = set(names)
    return next((p for p in KERNEL_PATHS if p in present), None)


# ----------------------------------------------------------------------------- download

def pip_download_command(version: str, dest: str, fallback: bool = False) -> list:
    """The pip command that fetches one release wheel, without dependencies, into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={version}", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--no-input", "-d", dest]
    return cmd + list(FALLBACK_TARGET) if fallback else cmd


def _clip(line: str, limit: int = 300) -> str:
    return line if len(line) <= limit else line[:limit] + " ..."


def fetch_wheel(version: str, dest: os.PathLike) -> Path:
    """Download the wheel of sglang==version into ``dest`` with pip; the wheel's path.

    Tries a wheel for this interpreter first, then (when pip found none) a Linux CPython
    3.12 build (FALLBACK_TARGET). ReleaseError when pip fails (the message has pip's last
    lines and suggests --sglang-wheel)."""
    version = check_version(version)
    os.makedirs(dest, exist_ok=True)
    tail = ""
    for fallback in (False, True):
        cmd = pip_download_command(version, os.fspath(dest), fallback)
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            tail = f"pip did not finish in {DOWNLOAD_TIMEOUT_S:.0f} s"
            break
        wheels = sorted(Path(dest).glob(f"{PACKAGE}-{version}-*.whl"))
        if proc.returncode == 0 and wheels:
            return wheels[0]
        lines = proc.stdout.strip().splitlines()
        tail = "\n".join(_clip(line) for line in ([ln for ln in lines if "ERROR" in ln] or lines[-3:]))
        if "No matching distribution" not in proc.stdout:
            break  # the index is unreachable or refused: another target will not help
    raise ReleaseError(f"sglang=={version}: pip could not download the release wheel "
                       f"({' '.join(pip_download_command(version, '<dir>'))}):\n{tail}\n"
                       f"Without a package index, download the wheel elsewhere and pass it with "
                       f"--sglang-wheel PATH (for example: pip download sglang=={version} --no-deps "
                       f"--only-binary :all: -d DIR).")


def version_key(version: str) -> tuple:
    """A sort key ordering release versions as PEP 440 does for the forms _VERSION_RE accepts:
    X.devN < XaN < XbN < XrcN < X < X.postN, release numbers compared without trailing zeros."""
    m = re.match(r"^([0-9]+(?:\.[0-9]+)*)(?:(a|b|rc)([0-9]+))?(?:\.post([0-9]+))?(?:\.dev([0-9]+))?$",
                 check_version(version))
    nums = [int(x) for x in m.group(1).split(".")]
    while len(nums) > 1 and nums[-1] == 0:
        nums.pop()
    pre, post, dev = m.group(2), m.group(4), m.group(5)
    if pre:
        pre_key = (0, ("a", "b", "rc").index(pre), int(m.group(3)))
    elif dev is not None and post is None:
        pre_key = (-1, 0, 0)  # X.devN comes before any pre-release of X
    else:
        pre_key = (1, 0, 0)
    return (tuple(nums), pre_key, int(post) if post is not None else -1,
            int(dev) if dev is not None else float("inf"))


def sort_versions(versions) -> list:
    """The versions, deduplicated, oldest first (version_key)."""
    return sorted(set(versions), key=version_key)


def index_versions(timeout_s: float = 120.0) -> list:
    """The sglang releases the package index serves (``pip index versions sglang``), oldest
    first. ReleaseError when pip cannot reach the index or prints no version list."""
    cmd = [sys.executable, "-m", "pip", "index", "versions", PACKAGE, "--disable-pip-version-check", "--no-input"]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ReleaseError(f"{' '.join(cmd[2:])}: no answer in {timeout_s:.0f} s") from None
    for line in proc.stdout.splitlines():
        if line.strip().startswith("Available versions:"):
            found = [v.strip() for v in line.split(":", 1)[1].split(",")]
            return sort_versions(v for v in found if _VERSION_RE.match(v))
    tail = "\n".join(_clip(ln) for ln in proc.stdout.strip().splitlines()[-3:])
    raise ReleaseError(f"{' '.join(cmd[2:])}: the package index gave no version list:\n{tail}")


# ----------------------------------------------------------------------------- cache

def _read_record(folder: Path) -> Optional[dict]:
    try:
        with open(folder / _RECORD) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _release(folder: Path, record: dict) -> Release:
    files = {p: folder / "files" / p for p in record["files"]}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise ReleaseError(f"sglang=={record['version']}: the cache folder {folder} lacks {missing[0]}; "
                           f"delete the folder to fetch the release again")
    wheel = folder / record["wheel"]
    return Release(record["version"], folder, wheel if wheel.is_file() else None, files, record["kernel_path"])


def _extract(wheel: Path, version: str, staging: Path) -> dict:
    """Copy the wheel and its kernel (and layer) files into ``staging``; the cache record."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            kernel_path = find_kernel_path(names)
            if kernel_path is None:
                raise ReleaseError(f"sglang=={version} ({wheel.name}): no EP-MoE kernel file at any of the paths "
                                   f"releases used: {', '.join(KERNEL_PATHS)}")
            wanted = [p for p in EXTRACTED_PATHS if p in set(names)]
            for p in wanted:
                target = staging / "files" / p
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(p))
    except zipfile.BadZipFile as exc:
        raise ReleaseError(f"sglang=={version}: {wheel} is not a readable wheel ({exc})") from None
    shutil.copy2(wheel, staging / wheel.name)
    return {"version": version, "wheel": wheel.name, "sha256": _sha256(wheel), "files": wanted,
            "kernel_path": kernel_path, "extracted_for": list(EXTRACTED_PATHS)}


def _install(wheel: Path, version: str, root: Path) -> Release:
    """Extract into a staging folder and move it into place (concurrent callers may race:
    the first complete folder wins, which is the same content)."""
    folder = root / version
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    try:
        record = _extract(wheel, version, staging)
        with open(staging / _RECORD, "w") as fh:
            json.dump(record, fh, indent=1)
        old = _read_record(folder)
        if old is not None and old.get("sha256") != record["sha256"]:
            shutil.rmtree(folder, ignore_errors=True)  # another wheel of this version replaces it
        elif old is None and folder.exists():
            shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder
        try:
            os.rename(staging, folder)
        except OSError:
            if _read_record(folder) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _release(folder, _read_record(folder))


def _current(record: Optional[dict]) -> bool:
    """A cache record extracted for today's EXTRACTED_PATHS (an older folder lacks the neighbours)."""
    return record is not None and record.get("extracted_for") == list(EXTRACTED_PATHS)


def _reextract(root: Path, version: str, record: dict) -> Release:
    """A cached folder extracted for other paths, redone from its own wheel (no download)."""
    with tempfile.TemporaryDirectory(prefix=f".reextract-{version}-", dir=root) as tmp:
        wheel = Path(tmp) / record["wheel"]
        shutil.copy2(root / version / record["wheel"], wheel)
        shutil.rmtree(root / version, ignore_errors=True)
        return _install(wheel, version, root)


@contextlib.contextmanager
def _locked(root: Path, version: str):
    """One process at a time per version (parallel check children share one download)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent callers may download twice; _install stays safe
        yield
        return
    with open(root / f".{version}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def resolve(version: Optional[str] = None, wheel: Optional[os.PathLike] = None,
            root: Optional[os.PathLike] = None) -> Release:
    """The release's kernel files, from the cache, a wheel on disk, or a pip download.

    ``version`` alone: the cache, else pip. ``wheel`` (a local .whl): registered in the
    cache under its version, replacing a cached wheel of that version with other bytes;
    with ``version`` too, the two must agree. ``root`` overrides ``cache_root()``.
    ValueError for a malformed version; ReleaseError for everything that fails after."""
    root = Path(root) if root is not None else cache_root()
    if wheel is not None:
        path = Path(os.path.expanduser(os.fspath(wheel)))
        if not path.is_file():
            raise ReleaseError(f"--sglang-wheel {wheel}: no such file")
        found = wheel_version(path)
        if version is not None and check_version(version) != found:
            raise ReleaseError(f"--sglang-wheel {wheel} holds sglang {found}, not the requested {version}")
        with _locked(root, found):
            record = _read_record(root / found)
            if _current(record) and record.get("sha256") == _sha256(path):
                return _release(root / found, record)
            return _install(path, found, root)
    if version is None:
        raise ValueError("resolve: expected a version or a wheel")
    version = check_version(version)
    record = _read_record(root / version)
    if _current(record):
        return _release(root / version, record)
    with _locked(root, version):
        record = _read_record(root / version)  # another process may have fetched it meanwhile
        if _current(record):
            return _release(root / version, record)
        if record is not None and (root / version / record["wheel"]).is_file():
            return _reextract(root, version, record)
        with tempfile.TemporaryDirectory(prefix=f".download-{version}-", dir=root) as tmp:
            return _install(fetch_wheel(version, tmp), version, root)


def cached_versions(root: Optional[os.PathLike] = None) -> list:
    """The versions with a complete folder in the cache (``root`` or cache_root()), oldest first."""
    root = Path(root) if root is not None else cache_root()
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        record = _read_record(folder) if folder.is_dir() and _VERSION_RE.match(folder.name) else None
        if record is not None and record.get("version") == folder.name:
            found.append(folder.name)
    return sort_versions(found)


def export_slim_cache(versions: Sequence[str], dest: os.PathLike,
                      root: Optional[os.PathLike] = None) -> Dict[str, int]:
    """Copy each release's ``release.json`` and ``files/`` (no wheel) into ``dest/VERSION``:
    a cache that loads offline with ``MOE_HARNESS_SGLANG_CACHE=dest``. Each release comes
    from ``resolve`` (the cache, else pip). Returns version -> bytes copied."""
    dest = Path(dest)
    sizes: Dict[str, int] = {}
    for version in versions:
        rel = resolve(version, root=root)
        target = dest / rel.version
        if target.resolve() == rel.folder.resolve():
            raise ReleaseError(f"--export-cache {dest}: that is the cache being read; choose another folder")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(rel.folder / "files", target / "files")
        shutil.copy2(rel.folder / _RECORD, target / _RECORD)
        sizes[rel.version] = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    return sizes


# ----------------------------------------------------------------------------- loading

def load_kernel_file(path: os.PathLike, label: Optional[str] = None, own_folder: bool = True) -> types.ModuleType:
    """Execute a kernel file unmodified as a module whose ``sglang.*`` imports (at load time
    and in its functions, whenever called) are the stand-ins of harness.sglang.standins.

    One module per file and label (harness.loader: the module name, derived from the label
    and the real path, is the cache); registered in sys.modules under that private name
    (e.g. ``_moe_ext_sglang__0_4_6_post1_<hash>``). ``own_folder``: append the
    file's folder to sys.path, so that a user's file can import its own helpers (off for
    release files, which import none). FileNotFoundError for a missing file; errors of the
    file's own code propagate; an ``sglang.*`` import without a stand-in is an ImportError
    naming it."""
    real = os.path.realpath(os.path.expanduser(os.fspath(path)))
    if not os.path.isfile(real):
        raise FileNotFoundError(f"{path}: no such file")
    stem = re.sub(r"\W", "_", label or os.path.splitext(os.path.basename(real))[0])
    name = f"_moe_ext_{stem}_{hashlib.sha1(real.encode()).hexdigest()[:8]}"
    return load_module(real, name, extend_sys_path=own_folder, builtins=scoped_builtins())


def load_release(release: Release) -> types.ModuleType:
    """The release's EP-MoE kernel file, loaded by ``load_kernel_file``."""
    return load_kernel_file(release.kernel_file, label=release.source, own_folder=False)


def load_neighbours(release: Release) -> Tuple[Tuple[str, types.ModuleType], ...]:
    """The release's neighbour files (NEIGHBOUR_PATHS it has), each loaded by ``load_kernel_file``:
    ((path inside the wheel, module), ...). A file that fails to load (an import the stand-ins do
    not cover) raises: the caller says which ops that leaves unbound."""
    return tuple((path, load_kernel_file(local, label=f"{release.source} {os.path.basename(path)}", own_folder=False))
                 for path, local in release.neighbour_files.items())
