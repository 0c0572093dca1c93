"""The command line generated from option dataclasses: one argparse flag per option, and one-line parse errors.

- `add_flags(parser, sections)`: a `--name` per option of the config tree (help, metavar, choices and `aliases`
  from its metadata), in one --help group per section or per option `group` (attention, MoE, optimizer,
  schedule, ...), each with ONE default: the value under the default preset, plus what each other preset uses
  where it differs. The values stay raw strings; `build_config` types and checks them with the config file's.
- `add_options(parser, cls, group)`: a `--name` per field of any other option dataclass (a subcommand's own
  flags, `cli/arguments.py`), typed and checked while parsing by the field's rules (`options.parse_value`):
  a bad value is the same one line as a bad train flag. Defaults are the fields' defaults.
- Every action made here carries `action.option = (name, field, type)`: the short help and `--help GROUP`
  (`cli/help.py`, groups named by `group_key`: the first word of the title, e.g. moe, optimizer, schedule) and the
  tests that feed every numeric flag bad values read it.
- `SuggestingParser`: argparse whose errors are one `UserError` line. An unknown flag gets, in this order: the
  flag another tool's name corresponds to (`near_names`), where a train flag belongs when given to another
  subcommand, or the closest of the parser's own flags (never the flag that was typed).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from typing import Any, Optional

from ..errors import UserError
from .options import base_type, iter_fields, parse_value, unknown_name_error
from .presets import PRESETS
from .schema import ALIASES, FLAGS, NEAR_NAMES, RunConfig, unknown_option_error

DEFAULT_PRESET = "base"
# --help group titles of the config sections (an option's `group` metadata overrides its section)
SECTION_TITLES = {"run": "run", "data": "data", "model": "model", "attn": "attention",
                  "moe": "MoE (mixture of experts)", "optim": "optimizer", "train": "training",
                  "log": "logging and output"}
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


def group_key(title: str) -> str:
    """The name `--help GROUP` takes for a help group: the first word of its title, lower case."""
    return title.split()[0].lower()


def _field_default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def help_text(name: str, f: dataclasses.Field) -> str:
    """The flag's help with ONE default: '(default: X)', X the value under the default preset, plus
    '; --config_format P: Y' for each other preset that sets another value. A help text that words its own
    default ('(default: the dataset's own)') keeps it, and the other presets' values are added inside it."""
    helptext, base = f.metadata["help"], PRESETS[DEFAULT_PRESET].get(name, _field_default(f))
    others = "".join(f"; --config_format {preset}: {_shown(values[name])}" for preset, values in PRESETS.items()
                     if preset != DEFAULT_PRESET and name in values and values[name] != base)
    if "(default:" in helptext:
        return helptext[:-1] + others + ")" if others and helptext.endswith(")") else helptext + others
    return f"{helptext} (default: {_shown(base)}{others})"


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
        help_ = _escaped(help_text(name, f))
        action = _OneName if len(names) > 1 else None
        if base_type(tp) is bool:
            # `--flag` alone means true; `--flag false|0|no` also parses
            a = g.add_argument(*names, dest=name, nargs="?", const="true", default=argparse.SUPPRESS, metavar="BOOL",
                               help=help_, action=action)
        else:
            # choices are checked by validate() so that every error reads the same way
            a = g.add_argument(*names, dest=name, default=argparse.SUPPRESS, help=help_, metavar=_metavar(f, tp),
                               action=action)
        a.option = (name, f, tp)


class _OneName(argparse.Action):
    """Store a flag that has other names (`aliases`, e.g. --learning_rate for --lr); the flag given under two of its
    names in one command line is refused instead of the last one silently winning."""

    def __call__(self, parser, namespace, values, option_string=None):
        last = getattr(self, "_last", None)  # (namespace, the name it was given as)
        if last is not None and last[0] is namespace and last[1] != option_string:
            raise UserError(f"{last[1]} and {option_string} are two names of the same flag; give it once")
        self._last = (namespace, option_string)
        setattr(namespace, self.dest, self.const if values is None else values)


def _escaped(text: str) -> str:
    return text.replace("%", "%%")  # argparse %-formats help strings


def _metavar(f: dataclasses.Field, tp) -> str:
    choices = [c for c in (f.metadata.get("choices") or []) if c is not None]
    return f.metadata.get("metavar") or ("{" + ",".join(map(str, choices)) + "}" if choices
                                         else base_type(tp).__name__.upper())


def add_options(parser: argparse.ArgumentParser, cls, group=None):
    """One flag per field of the option dataclass `cls` (see the module doc); `group`: None (the parser's own
    options), a title (a new --help group "<title> options") or an existing argument group. Returns the group.

    A value is typed and checked while parsing (`parse_value`: type, finiteness, range, ASCII digits, choices,
    check), so a bad one is one ConfigError line before the command runs. A bool field is a switch (`--json`);
    a list field is repeatable (`--grid A --grid B`)."""
    target = parser.add_argument_group(f"{group} options") if isinstance(group, str) else group or parser
    for path, f, tp in iter_fields(cls):
        name, default, base = path[-1], _field_default(f), base_type(tp)
        names = [f"--{name}"] + [f"--{a}" for a in f.metadata.get("aliases", ())]
        helptext = f.metadata["help"]
        words = {v: k for k, v in (f.metadata.get("keywords") or {}).items()}
        shown = words.get(default, default) if not isinstance(default, (list, dict)) else None
        if "(default:" not in helptext and shown is not None and shown != "" and base is not bool:
            helptext += f" (default: {_shown(shown)})"
        kw = dict(dest=name, default=default, help=_escaped(helptext))
        if base is bool:
            a = target.add_argument(*names, action="store_true" if not default else argparse.BooleanOptionalAction,
                                    **kw)
        elif base is list:
            a = target.add_argument(*names, action="append", metavar=f.metadata.get("metavar") or "VALUE", **kw)
        else:
            a = target.add_argument(*names, type=functools.partial(_flag_value, name, f, tp),
                                    metavar=_metavar(f, tp), **kw)
        a.option = (name, f, tp)
    return target


class _BadFlagValue(Exception):
    """Carries a flag value's ConfigError past argparse, which would swallow it (lmsprint's errors are ValueErrors,
    and argparse rewords a ValueError from a type function as "invalid <function repr> value")."""

    def __init__(self, err: UserError):
        super().__init__(str(err))
        self.err = err


def _flag_value(name: str, f: dataclasses.Field, tp, raw):
    try:
        return parse_value(name, f, tp, raw)
    except UserError as e:
        raise _BadFlagValue(e) from None


def _is_train_flag(name: str) -> bool:
    return name in FLAGS or name in ALIASES or name in TRAIN_ONLY_FLAGS


class SuggestingParser(argparse.ArgumentParser):
    """argparse whose errors are one line, exit 2, and name the right flag for unknown ones."""

    def parse_known_args(self, args=None, namespace=None):
        try:
            return super().parse_known_args(args, namespace)
        except _BadFlagValue as e:  # a flag value that broke its option's rules: that rule's own line
            raise e.err from None

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
