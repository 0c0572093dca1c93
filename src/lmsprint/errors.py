"""Errors: the exception classes every layer raises, and how the CLI words them.

- `UserError(message)`: a problem with the user's input (flags, files, data, checkpoints, memory), not a bug.
  The CLI prints `lmsprint: error: <message>` on one line and exits with status 2, with no traceback.
- Domain errors, raised by model, data, optimizer and checkpoint code in their own words:
  `ConfigError` (a bad option value or combination), `DataError`, `CheckpointError`. They are `UserError`s, so
  the CLI handles them the same way.
- Every `UserError` is a `ValueError`, so a Python caller catches lmsprint's errors as the built-in kind it
  expects; `RunNotFound` (a run directory that does not exist or holds no run) and `InputNotFound` (a file the
  caller named that does not exist) are also `FileNotFoundError`s, `ArgumentTypeError` (a Python API argument of
  the wrong type) also a `TypeError`; `ArgumentError` / `ArgumentTypeError` name the argument in `.argument`.
- `RunFileError(path, field, problem)`: a file of a run directory that is malformed or does not match the run
  (a `CheckpointError`); the message names the file and the field. `UnsafePathError`: a path that would leave a
  run directory, or a symbolic link where lmsprint writes (a `ValueError`).
- A `ConfigError` names options as `` `name` `` in its message. From Python, `str(e)` reads
  "attention_window 300 ..."; the CLI shows the same sentence with flags: "--attention_window 300 ..."
  (`cli_message(e)`). So model code never words its errors as command-line flags.
- `plural(n, noun)`: a count and its noun as every message prints it: "1 process", "2 processes", "1,024 tokens".
"""

from __future__ import annotations

import re

EXIT_USAGE = 2

_OPTION = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


class UserError(ValueError):
    """A problem with the user's input, not a bug: one line saying what is wrong and how to fix it."""

    def __init__(self, message: str):
        # keep it to one line: the CLI prints it verbatim
        self.template = " ".join(str(message).split())
        super().__init__(_OPTION.sub(r"\1", self.template))


class ConfigError(UserError):
    """A bad option value or combination; option names are written `` `like_this` `` in the message."""


class DataError(UserError):
    """Data that is missing, unreadable or not what it claims to be."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, from another format version, or does not fit the model."""


class RunFileError(CheckpointError):
    """A file of a run directory that is malformed or does not match the run: names the file and the field."""

    def __init__(self, path: str, field: str, problem: str, hint: str = "the file was edited or is damaged; "
                 "use an intact copy of the run"):
        self.path, self.field = str(path), str(field)
        super().__init__(f"{path}: {field} {problem}; {hint}" if field else f"{path}: {problem}; {hint}")


class UnsafePathError(UserError):
    """A path that would leave a run directory (or the results folder), or a symbolic link where lmsprint writes."""


class InputNotFound(UserError, FileNotFoundError):
    """A file or folder the user named that does not exist."""


class RunNotFound(InputNotFound):
    """A run directory that does not exist or holds no run (no config.yaml), or no run in a results folder."""


class ArgumentError(UserError):
    """A bad value of a Python API argument; `.argument` is its name."""

    def __init__(self, argument: str, message: str):
        self.argument = argument
        super().__init__(message)


class ArgumentTypeError(UserError, TypeError):
    """A Python API argument of the wrong type; `.argument` is its name."""

    def __init__(self, argument: str, message: str):
        self.argument = argument
        super().__init__(message)


def cli_message(err: UserError) -> str:
    """The one-line message the CLI prints: option names marked `` `name` `` become `--name`."""
    return _OPTION.sub(r"--\1", getattr(err, "template", str(err)))


def plural(n, noun: str, many: str = "") -> str:
    """'1 process' / '0 processes' / '12,345 tokens' / '2 micro-batches': `n` (an int with thousands separated)
    and `noun`, plural unless n == 1 (+es after s, x, z, ch, sh; else +s; `many` gives any other plural)."""
    word = noun if n == 1 else many or noun + ("es" if noun.endswith(("s", "x", "z", "ch", "sh")) else "s")
    return f"{n:,} {word}" if isinstance(n, int) and not isinstance(n, bool) else f"{n} {word}"
