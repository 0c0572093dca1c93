"""Help that fits a screen: `-h/--help` lists the most used flags, `--help GROUP` one group's, `--help-all` all.

`add_help_options(parser)` gives a subcommand's parser (made with add_help=False) those three. The short help
lists the command's own options (those not from the config tree) and the config flags whose option says
`common=True` (20 flags for train), when the command has more than `SHORT_MAX` options (else all of them); then
each group with its number of flags and how to see it. A group is named by its key (`config.flags.group_key`, the
first word of its title: run, data, model, attention, moe, optimizer, schedule, training, evaluation,
checkpoints, logging, ...), or any unique prefix of it. The groups and the flags in them come from the parser's
argument groups and the actions' option metadata (`action.option`), never from a list kept here.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap

from ..config import FLAGS
from ..config.flags import group_key
from ..errors import UserError


SHORT_MAX = 30  # the short help of a command with more options lists only its own and the `common` config flags


def _is_config_flag(a: argparse.Action) -> bool:
    opt = getattr(a, "option", None)
    return opt is not None and opt[0] in FLAGS and FLAGS[opt[0]][1] is opt[1]


def _is_common(a: argparse.Action) -> bool:
    if _is_config_flag(a):
        return bool(a.option[1].metadata.get("common"))
    return bool(a.option_strings)  # a command's own option (not a positional: those are in the usage line)


def _groups(parser: argparse.ArgumentParser) -> list[tuple[str, str, list]]:
    """(key, title, option actions) of each group that has options, in the parser's order."""
    out = []
    for g in parser._action_groups:
        actions = [a for a in g._group_actions if a.option_strings and a.help is not argparse.SUPPRESS]
        if actions:
            title = g.title or "options"
            out.append((group_key(title), title, actions))
    return out


def _format(parser: argparse.ArgumentParser, sections: list[tuple[str, list]], description: bool = True) -> str:
    fmt = parser._get_formatter()
    fmt.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    if description:
        fmt.add_text(parser.description)
    for title, actions in sections:
        fmt.start_section(title)
        fmt.add_arguments(actions)
        fmt.end_section()
    if description:
        fmt.add_text(parser.epilog)
    return fmt.format_help()


def short_help(parser: argparse.ArgumentParser) -> str:
    shown = [a for a in parser._actions if a.option_strings and a.help is not argparse.SUPPRESS]
    if len(shown) <= SHORT_MAX:  # a command with few options lists them all
        return _format(parser, [("options", shown)])
    common = [a for a in shown if _is_common(a)]
    counts = [(key, sum(not isinstance(a, (_GroupHelp, _FullHelp)) for a in acts)) for key, _, acts in _groups(parser)]
    counts = [(key, n) for key, n in counts if n]
    total = sum(n for _, n in counts)
    text = _format(parser, [("most used options", common)])
    if len(common) - 2 < total:  # (the two help switches are in `common`)
        listing = ", ".join(f"{key} ({n})" for key, n in counts)
        text += "\n" + textwrap.fill(f"all {total} options, in groups: {listing}", shutil.get_terminal_size().columns
                                     - 2) + "\n"
        text += (f"  {parser.prog} --help GROUP   one group's options, e.g. --help {counts[-1][0]}\n"
                 f"  {parser.prog} --help-all     every option\n")
    return text


def group_help(parser: argparse.ArgumentParser, name: str) -> str:
    groups = _groups(parser)
    want = name.strip().lower()
    hits = [g for g in groups if want in (g[0], g[1].lower(), f"{g[1].lower()} options")] or \
        [g for g in groups if g[0].startswith(want)]
    if len(hits) != 1:
        keys = ", ".join(key for key, _, _ in groups)
        what = "matches several groups" if hits else "is not a group"
        raise UserError(f"--help '{name}' {what}; use one of: {keys} (or --help-all)")
    key, title, actions = hits[0]
    return _format(parser, [(title if title.endswith("options") else f"{title} options", actions)], description=False)


class _GroupHelp(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs="?", metavar="GROUP", help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser._print_message(group_help(parser, values) if values else short_help(parser), sys.stdout)
        parser.exit()


class _FullHelp(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        parser.exit()


def add_help_options(parser: argparse.ArgumentParser) -> None:
    """-h/--help [GROUP] and --help-all on a parser made with add_help=False; a short usage line."""
    parser.add_argument("-h", "--help", action=_GroupHelp,
                        help="this help; with GROUP, only that group's options")
    parser.add_argument("--help-all", action=_FullHelp, help="every option, by group")


def set_usage(parser: argparse.ArgumentParser) -> None:
    """A one-line usage: `PROG [OPTIONS] POSITIONALS` (argparse's own lists every flag: dozens of lines)."""
    positionals = []
    for a in parser._actions:
        if not a.option_strings and a.help is not argparse.SUPPRESS:
            m = a.metavar or a.dest
            positionals.append({"+": f"{m} [{m} ...]", "*": f"[{m} ...]", "?": f"[{m}]"}.get(a.nargs, m))
    parser.usage = " ".join(["%(prog)s", "[OPTIONS]", *positionals])
