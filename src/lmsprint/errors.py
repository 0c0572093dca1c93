"""User-facing errors: one line on stderr saying what is wrong and how to fix it, exit code 2.

Raise `UserError("what is wrong; how to fix it")` anywhere; the CLI catches it, prints
`lmsprint: error: <message>` and exits with status 2, with no traceback.
"""

from __future__ import annotations

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the user's input (flags, files, data, checkpoints, memory), not a bug."""

    def __init__(self, message: str):
        # keep it to one line: the CLI prints it verbatim
        super().__init__(" ".join(str(message).split()))
