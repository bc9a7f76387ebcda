"""How every `tirl` command ends on a user error or an interruption: one line on stderr, a documented exit code.

    fail         a user error (a bad option, bad data, a directory in use): `tirl CMD: error: …`, exit code 2
    interrupted  Ctrl-C: what was kept and how to continue, exit code 130 (the shell's code for SIGINT)
    terminated   SIGTERM (`kill`, a scheduler's time limit) inside `on_sigterm`: the same, exit code 143 (SIGTERM's)

The line starts on a line of its own (a progress bar may have left the cursor mid-line) and is one line whatever the
message holds (newlines are folded), so scripts and logs can match it.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def _line(text: object) -> str:
    return " ".join(str(text).split())


def fail(command: str, message: object) -> int:
    """Print `tirl COMMAND: error: MESSAGE` as one line on stderr; return exit code 2."""
    print(f"\ntirl {command}: error: {_line(message)}", file=sys.stderr)
    return 2


def interrupted(command: str, kept: object) -> int:
    """Print `tirl COMMAND: interrupted; KEPT` as one line on stderr; return exit code 130."""
    print(f"\ntirl {command}: interrupted; {_line(kept)}", file=sys.stderr)
    return 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the job is (`on_sigterm`): a KeyboardInterrupt, so that the job cleans up as after Ctrl-C,
    and is then reported as `terminated`."""


@contextmanager
def on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM raises `Terminated` instead of ending the process at once without a word."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set a handler
        yield
        return

    def handler(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def terminated(command: str, kept: object) -> int:
    """Print `tirl COMMAND: terminated (SIGTERM); KEPT` as one line on stderr; return exit code 143."""
    print(f"\ntirl {command}: terminated (SIGTERM); {_line(kept)}", file=sys.stderr)
    return 143


__all__ = ["Terminated", "fail", "interrupted", "on_sigterm", "terminated"]
