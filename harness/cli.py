"""The ``moe-harness`` command: the top-level parser and the dispatch to a subcommand's front end
(harness.commands), which builds the command's options and calls the engine. A value that
cannot run (harness.options.OptionError) is reported in one line with exit status 2."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .backend import BACKENDS, select_backend
from .commands import COMMAND_MODULES
from .options import OptionError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-harness", description=(
        "Check and time expert-parallel MoE kernels (SGLang conventions) against pure-PyTorch references."))
    parser.add_argument("--backend", choices=BACKENDS,
                        help="cuda (default when a GPU is visible) or interpreter (TRITON_INTERPRET=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"harness.commands.{name}").add_parser(sub)
    return parser


# Commands that run their work in child processes (harness.supervise): their children's server
# is started before the parser imports the harness, so that the two imports of torch overlap.
CHILD_COMMANDS = ("check", "mutate")


def command_name(argv: List[str]) -> Optional[str]:
    """The subcommand named in ``argv`` (after any top-level options), or None."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--backend" else 1
    return argv[i] if i < len(argv) else None


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if command_name(argv) in CHILD_COMMANDS:
        from .supervise import start_child_server
        start_child_server()
    parser = build_parser()
    # --backend may come after the subcommand too; accept it anywhere.
    if "--backend" in argv[1:]:
        i = argv.index("--backend")
        argv = argv[i:i + 2] + argv[:i] + argv[i + 2:]
    args = parser.parse_args(argv)
    try:
        backend = select_backend(args.backend)
    except ValueError as exc:  # no GPU for --backend cuda
        print(f"moe-harness: error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.run(args, backend) or 0)
    except OptionError as exc:  # a value that cannot run: one line, as argparse reports a bad flag
        print(f"moe-harness {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
