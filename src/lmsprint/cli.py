"""The `lmsprint` command line: subcommands registered by module, errors as one line with exit code 2.

Each subcommand lives in the module that owns the concern and exposes `add_arguments(parser)` and
`run(args) -> int`. This file only wires them up and turns `UserError` into `lmsprint: error: ...` + exit 2.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional

from .config import SuggestingParser
from .errors import EXIT_USAGE, UserError, cli_message

SUBCOMMANDS = {
    "train": ("lmsprint.train.commands", "train a model (llm-baselines flags + --time_budget, --resume)"),
    "prepare": ("lmsprint.data.prepare", "tokenize a dataset into token files + manifest"),
    "eval": ("lmsprint.train.commands", "re-evaluate a run's checkpoint on the val split"),
    "generate": ("lmsprint.train.commands", "sample text from a run's checkpoint"),
    "bench": ("lmsprint.bench", "time training steps on synthetic tokens (tokens/s, MFU, memory)"),
    "compare": ("lmsprint.track.compare", "compare runs: table, seed groups, plots, report"),
    "sweep": ("lmsprint.track.sweep", "run a grid of flag values x seeds, resumable"),
}


def build_parser(only: Optional[str] = None) -> SuggestingParser:
    """All subcommands; with `only`, import just that subcommand's module (the others stay listed in --help),
    so e.g. `lmsprint bench` needs nothing that other subcommands import."""
    parser = SuggestingParser(prog="lmsprint", description="Pretrain language models against the clock.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=SuggestingParser)
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if only is not None and name != only:
            continue
        mod = importlib.import_module(module)
        getattr(mod, f"add_{name}_arguments")(p)
        p.set_defaults(_run=getattr(mod, f"run_{name}"))
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(only=argv[0] if argv and argv[0] in SUBCOMMANDS else None)
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return EXIT_USAGE
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"lmsprint: error: {cli_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("lmsprint: interrupted", file=sys.stderr)
        return 130
