"""How every `tirl` command ends on a user error or an interruption: one line on stderr, a documented exit code.

    fail         a user error (a bad option, bad data, a directory in use): `tirl CMD: error: …`, exit code 2
    interrupted  Ctrl-C: what was kept and how to continue, exit code 130 (the shell's code for SIGINT)

The line starts on a line of its own (a progress bar may have left the cursor mid-line) and is one line whatever the
message holds (newlines are folded), so scripts and logs can match it.
"""

from __future__ import annotations

import sys


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


__all__ = ["fail", "interrupted"]
