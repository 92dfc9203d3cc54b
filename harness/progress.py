"""Progress on stderr shared by the long commands (check, mutate): a line on its own, and a
line every PROGRESS_EVERY_S seconds while the work runs, whether or not stderr is a terminal
(a CI log shows a long run as it goes)."""
from __future__ import annotations

import contextlib
import sys
import threading
from typing import Callable, Iterator, Optional

PROGRESS_EVERY_S = 10.0  # the periodic line's period


def write_line(text: str, tty: bool) -> None:
    """``text`` as a line of its own (on a terminal, after the line being rewritten there)."""
    sys.stderr.write(("\n" if tty else "") + text + "\n")
    sys.stderr.flush()


@contextlib.contextmanager
def periodic_lines(line: Callable[[], str], tty: bool, every_s: Optional[float] = None) -> Iterator[None]:
    """While the block runs, write ``line()`` every ``every_s`` seconds (None: PROGRESS_EVERY_S
    as it is then; 0 or less: never), from a thread of its own."""
    every_s = PROGRESS_EVERY_S if every_s is None else every_s
    stop, thread = threading.Event(), None
    if every_s > 0:
        def beat():
            while not stop.wait(every_s):
                write_line(line(), tty)
        thread = threading.Thread(target=beat, name="progress", daemon=True)
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread is not None:
            thread.join()
