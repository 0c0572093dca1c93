"""The command line generated from the config tree: one argparse flag per option, and one-line parse errors.

- `add_flags(parser, sections)`: a `--name` per option (help, metavar and choices from its metadata).
- `SuggestingParser`: argparse whose errors are one `UserError` line, naming the closest flag for a typo.
- `unknown_flag_error(name, where)`: that line for an unknown flag / config key / grid key.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any, Optional

from ..errors import UserError
from .options import base_type, iter_fields, unknown_name_error
from .schema import FLAGS, RunConfig


def unknown_flag_error(name: str, where: str = "flag") -> UserError:
    """'unknown {where} '{name}'; did you mean --closest?' (or a pointer to --help)."""
    return unknown_name_error(name, list(FLAGS) + ["config"], where)


def add_flags(parser: argparse.ArgumentParser, sections: Optional[tuple] = None) -> None:
    """Add one flag per config field (restricted to `sections`, e.g. ('data',), if given).

    Defaults are argparse.SUPPRESS so that only flags the user typed appear in the namespace; the preset and the
    config file fill in the rest (see `build_config`)."""
    groups: dict[str, Any] = {}
    for path, f, tp in iter_fields(RunConfig):
        if not f.metadata.get("cli", True):
            continue
        sec = path[0] if len(path) > 1 else "run"
        if sections is not None and sec not in sections:
            continue
        g = groups.get(sec) or groups.setdefault(sec, parser.add_argument_group(f"{sec} options"))
        name = path[-1]
        base = base_type(tp)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f"{f.metadata['help']} (default: {default})"
        choices = [c for c in (f.metadata.get("choices") or []) if c is not None] or None
        if base is bool:
            # `--flag` alone means true; `--flag false|0|no` also parses
            g.add_argument(f"--{name}", nargs="?", const="true", default=argparse.SUPPRESS, metavar="BOOL",
                           help=help_)
        else:
            # choices are checked by validate() so that every error reads the same way
            metavar = f.metadata.get("metavar") or ("{" + ",".join(map(str, choices)) + "}" if choices
                                                    else base.__name__.upper())
            g.add_argument(f"--{name}", default=argparse.SUPPRESS, help=help_, metavar=metavar)


class SuggestingParser(argparse.ArgumentParser):
    """argparse whose errors are one line, exit 2, and name the closest valid flag for unknown ones."""

    def error(self, message):  # noqa: D401
        m = re.search(r"unrecognized arguments: (\S+)", message)
        if m:
            name = m.group(1).lstrip("-").split("=")[0]
            raise unknown_flag_error(name)
        raise UserError(message)
