"""The command line generated from the config tree: one argparse flag per option, and one-line parse errors.

- `add_flags(parser, sections)`: a `--name` per option (help, metavar, choices and `aliases` from its metadata),
  in one --help group per section or per option `group` (attention, MoE, optimizer, schedule, ...), each with
  ONE default: the value under the default preset, plus what the other presets use where they differ.
- `SuggestingParser`: argparse whose errors are one `UserError` line. An unknown flag gets, in this order: the
  flag another tool's name corresponds to (`near_names`), where a train flag belongs when given to another
  subcommand, or the closest of the parser's own flags (never the flag that was typed).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any, Optional

from ..errors import UserError
from .options import base_type, iter_fields, unknown_name_error
from .presets import PRESETS
from .schema import ALIASES, FLAGS, NEAR_NAMES, RunConfig, unknown_option_error

DEFAULT_PRESET = "base"
# --help group titles of the config sections (an option's `group` metadata overrides its section)
SECTION_TITLES = {"run": "run", "data": "data", "model": "model", "attn": "attention", "moe": "mixture of experts",
                  "optim": "optimizer", "train": "training", "log": "logging and output"}
# flags of `lmsprint train` that are not config options
TRAIN_ONLY_FLAGS = ("config", "resume", "print_config")
# subcommands that do not take the train flags (sweep passes them on after `--`)
OTHER_SUBCOMMANDS = ("sweep", "compare", "prepare", "bench", "eval", "generate")


def _shown(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if v == "":
        return "empty"
    return f"{v:g}" if isinstance(v, float) else str(v)


def default_text(name: str, f: dataclasses.Field) -> str:
    """'(default: X)' with X the value under the default preset, plus '; --config_format P: Y' for each other preset
    that sets another value; '' when the help text already says what the default is."""
    if "(default:" in f.metadata["help"]:
        return ""
    field_default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    base = PRESETS[DEFAULT_PRESET].get(name, field_default)
    text = f"default: {_shown(base)}"
    for preset, values in PRESETS.items():
        if preset != DEFAULT_PRESET and name in values and values[name] != base:
            text += f"; --config_format {preset}: {_shown(values[name])}"
    return f" ({text})"


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
        title = f.metadata.get("group") or SECTION_TITLES.get(path[-2] if len(path) > 1 else "run", sec)
        g = groups.get(title) or groups.setdefault(title, parser.add_argument_group(f"{title} options"))
        name = path[-1]
        names = [f"--{name}"] + [f"--{a}" for a in f.metadata.get("aliases", ())]
        base = base_type(tp)
        help_ = f.metadata["help"] + default_text(name, f)
        choices = [c for c in (f.metadata.get("choices") or []) if c is not None] or None
        if base is bool:
            # `--flag` alone means true; `--flag false|0|no` also parses
            g.add_argument(*names, dest=name, nargs="?", const="true", default=argparse.SUPPRESS, metavar="BOOL",
                           help=help_)
        else:
            # choices are checked by validate() so that every error reads the same way
            metavar = f.metadata.get("metavar") or ("{" + ",".join(map(str, choices)) + "}" if choices
                                                    else base.__name__.upper())
            g.add_argument(*names, dest=name, default=argparse.SUPPRESS, help=help_, metavar=metavar)


def _is_train_flag(name: str) -> bool:
    return name in FLAGS or name in ALIASES or name in TRAIN_ONLY_FLAGS


class SuggestingParser(argparse.ArgumentParser):
    """argparse whose errors are one line, exit 2, and name the right flag for unknown ones."""

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            (self._subparser(ns) or self).error("unrecognized arguments: " + " ".join(extras))
        return ns

    def _subparser(self, ns) -> Optional[argparse.ArgumentParser]:
        for a in self._actions:
            if isinstance(a, argparse._SubParsersAction) and getattr(ns, a.dest or "", None) in a.choices:
                return a.choices[getattr(ns, a.dest)]
        return None

    def own_flags(self) -> list[str]:
        return [s.lstrip("-") for s in self._option_string_actions if s.startswith("--")]

    def unknown(self, name: str) -> UserError:
        if name in NEAR_NAMES:
            return unknown_option_error(name)
        words = self.prog.split()
        sub = words[1] if len(words) > 1 and "--" not in words else None  # "lmsprint sweep -- <train flags>": train's
        if sub in OTHER_SUBCOMMANDS and _is_train_flag(name):
            if sub == "sweep":
                return UserError(f"--{name} is a train flag: put it after `--`: lmsprint sweep ... -- --{name} ...")
            return UserError(f"{sub} has no --{name} (it is a train flag); see lmsprint {sub} --help")
        return unknown_name_error(name, self.own_flags(), "flag")

    def error(self, message):  # noqa: D401
        m = re.search(r"unrecognized arguments: .*?(--?[^\s=]+)", message)
        if m:
            raise self.unknown(m.group(1).lstrip("-"))
        raise UserError(message)
