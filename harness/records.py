"""JSON records on disk, written whole.

Every record the harness leaves behind (the check/mutate/bench/ep-world reports, a child's
progress file) is rewritten while a run goes on, so that a run cut short by a time limit or a
crash still leaves what it reached. ``write_json`` writes a temporary file beside the target
and renames it over the target, so a reader (the parent polling a child, a CI step collecting
artifacts) sees the previous record or the new one, never half a file; ``read_json`` is the
polling side, for which a record not written yet is not an error.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional


def write_json(path: str, record: Any, indent: Optional[int] = 1) -> None:
    """Write ``record`` (JSON-safe) to ``path`` atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=indent)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    """The record at ``path``, or None when there is none yet (or it cannot be parsed)."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None
