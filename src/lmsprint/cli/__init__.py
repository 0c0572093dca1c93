"""The `lmsprint` command line: the parser, the subcommands, and the one place errors become a line of text.

Each subcommand group is a module of this package exposing `add_<name>_arguments(parser)` and
`run_<name>(args) -> int`: `train.py` (train, eval, generate; eval's lm-eval part in `lmeval.py`), `prepare.py`,
`bench.py`, `compare.py`, `sweep.py`, `ladder.py`, `forecast.py`, `export.py`.
`main()` wires them up and turns any `UserError` (including the domain errors ConfigError, DataError,
CheckpointError) into `lmsprint: error: <message>` on one line with exit status 2; `errors.cli_message` words
option names as flags (`--name`).
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional

from ..version import __version__
from ..config import SuggestingParser
from ..errors import EXIT_USAGE, UserError, cli_message
from ..files import DISK_FULL, NOT_WRITABLE

SUBCOMMANDS = {
    "train": ("lmsprint.cli.train", "train a model (llm-baselines flags + --time_budget, --resume)"),
    "prepare": ("lmsprint.cli.prepare", "tokenize a dataset into token files + manifest"),
    "eval": ("lmsprint.cli.train", "re-evaluate a run's checkpoint on the val split, or on lm-eval tasks (--tasks)"),
    "generate": ("lmsprint.cli.train", "sample text from a run's checkpoint"),
    "export": ("lmsprint.cli.export", "write a Hugging Face transformers folder (safetensors + tokenizer) from a run"),
    "bench": ("lmsprint.cli.bench", "time training steps on synthetic tokens (tokens/s, MFU, memory)"),
    "compare": ("lmsprint.cli.compare", "compare runs: table, seed groups, plots, report"),
    "sweep": ("lmsprint.cli.sweep", "run a grid of flag values x seeds, resumable"),
    "ladder": ("lmsprint.cli.ladder", "train one arm at fractions of a target budget x seeds (wsd: branched), "
               "for forecast"),
    "forecast": ("lmsprint.cli.forecast", "forecast each arm's metric at a budget from its ladder, with an interval"),
}


def build_parser(only: Optional[str] = None) -> SuggestingParser:
    """All subcommands; with `only`, import just that subcommand's module (the others stay listed in --help),
    so e.g. `lmsprint bench` needs nothing that other subcommands import."""
    parser = SuggestingParser(prog="lmsprint", description="Pretrain language models against the clock.")
    parser.add_argument("--version", action="version", version=f"lmsprint {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=SuggestingParser)
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if only is not None and name != only:
            continue
        mod = importlib.import_module(module)  # by name: only the subcommand being run is imported
        getattr(mod, f"add_{name}_arguments")(p)
        p.set_defaults(_run=getattr(mod, f"run_{name}"))
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(only=argv[0] if argv and argv[0] in SUBCOMMANDS else "")  # "": no subcommand module
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return EXIT_USAGE
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"lmsprint: error: {cli_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # the machine, not lmsprint: a full disk, a read-only or missing folder, ...
        print(f"lmsprint: error: {os_error_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("lmsprint: interrupted", file=sys.stderr)
        return 130


def os_error_message(e: OSError) -> str:
    """One line for an OSError: what failed on which file, and what to do."""
    where = f" ({e.filename})" if e.filename else ""
    if e.errno is None:  # e.g. numpy's short write "N requested and M written": a full disk or a file size limit
        return " ".join(f"{e}; the disk may be full or the file not writable; free space and run it again".split())
    if e.errno in DISK_FULL:
        hint = "free space (files written before are kept; a run continues with --resume)"
    elif e.errno in NOT_WRITABLE:
        hint = "choose a writable folder"
    else:
        hint = "check the path"
    return " ".join(f"{e.strerror or e}{where}; {hint}".split())
