"""The `lmsprint` command line: the parser, the dispatch to each subcommand, and the one place errors become a
line of text.

- `COMMANDS`: name -> (one-line help, its arguments builder in `arguments.py`, what runs it as
  "module:function"). The parser is built from `arguments.py` alone (the config package, no torch), so
  `--help`, `--version` and `train --print_config` answer in well under a second; the command's own module
  (`train.py` for train/eval/generate, `prepare.py`, `bench.py`, `compare.py`, `sweep.py`, `ladder.py`,
  `forecast.py`, `export.py`), which
  imports the training stack, is imported by name only when the command runs (`importlib`, here and nowhere else;
  tests/test_layers.py checks that every target is a module of this package).
- Every subcommand has `-h/--help [GROUP]` (the most used flags, or one group's) and `--help-all` (cli/help.py).
- `main()` turns any `UserError` (including the domain errors ConfigError, DataError, CheckpointError) into
  `lmsprint: error: <message>` on one line with exit status 2; `errors.cli_message` words option names as flags
  (`--name`), and an OSError becomes one line naming the file (`os_error_message`).
"""

from __future__ import annotations

import importlib
import sys

from ..config import SuggestingParser
from ..errors import EXIT_USAGE, UserError, cli_message, is_out_of_memory, out_of_memory_text
from ..files import DISK_FULL, NOT_WRITABLE
from ..version import __version__
from . import arguments as A
from .help import add_help_options, set_usage

COMMANDS = {
    "train": ("train a model (llm-baselines flags + --time_budget, --resume)",
              A.add_train_arguments, "lmsprint.cli.train:run_train"),
    "prepare": ("tokenize a dataset into token files + manifest",
                A.add_prepare_arguments, "lmsprint.cli.prepare:run_prepare"),
    "eval": ("re-evaluate a run's checkpoint on the val split, or on lm-eval tasks (--tasks)",
             A.add_eval_arguments, "lmsprint.cli.train:run_eval"),
    "generate": ("sample text from a run's checkpoint", A.add_generate_arguments, "lmsprint.cli.train:run_generate"),
    "export": ("write a Hugging Face transformers folder (safetensors + tokenizer) from a run",
               A.add_export_arguments, "lmsprint.cli.export:run_export"),
    "bench": ("time training steps on synthetic tokens (tokens/s, MFU, memory)",
              A.add_bench_arguments, "lmsprint.cli.bench:run_bench"),
    "compare": ("compare runs: tables by val set, arms, tests, targets, plots, report", A.add_compare_arguments,
                "lmsprint.cli.compare:run_compare"),
    "sweep": ("run a grid of flag values x seeds, resumable", A.add_sweep_arguments, "lmsprint.cli.sweep:run_sweep"),
    "ladder": ("train one arm at fractions of a target budget x seeds (wsd: branched), for forecast",
               A.add_ladder_arguments, "lmsprint.cli.ladder:run_ladder"),
    "forecast": ("forecast each arm's metric at a budget from its ladder, with an interval",
                 A.add_forecast_arguments, "lmsprint.cli.forecast:run_forecast"),
}


def build_parser(only=None) -> SuggestingParser:
    """All subcommands' parsers (with `only`, just that one's flags are built; the others stay listed)."""
    parser = SuggestingParser(prog="lmsprint", description="Pretrain language models against the clock.")
    parser.add_argument("--version", action="version", version=f"lmsprint {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=SuggestingParser)
    for name, (help_, add_arguments, target) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, add_help=False)
        if only is not None and name != only:
            continue
        add_help_options(p)
        add_arguments(p)
        set_usage(p)
        p.set_defaults(_run=target)
    return parser


def command(target: str):
    """'module:function' -> the function; the module (a command of this package) is imported now."""
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(only=argv[0] if argv and argv[0] in COMMANDS else "")  # "": no subcommand's flags
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return EXIT_USAGE
        return int(command(args._run)(args) or 0)
    except UserError as e:
        print(f"lmsprint: error: {cli_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # the machine, not lmsprint: a full disk, a read-only or missing folder, ...
        print(f"lmsprint: error: {os_error_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("lmsprint: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, MemoryError) as e:  # out of memory outside training (eval, generate, export, bench): one line
        if not is_out_of_memory(e):
            raise
        print(f"lmsprint: error: {out_of_memory_text(e)}; use a smaller model or batch, or a machine with more memory",
              file=sys.stderr)
        return EXIT_USAGE


def os_error_message(e: OSError) -> str:
    """One line for an OSError: what failed on which file, and what to do."""
    where = f" ({e.filename})" if e.filename else ""
    if e.errno is None and isinstance(e, FileNotFoundError):  # e.g. a library's "Unable to find 'x.jsonl'"
        return " ".join(f"{e}; check the path".split())
    if e.errno is None:  # e.g. numpy's short write "N requested and M written": a full disk or a file size limit
        return " ".join(f"{e}; the disk may be full or the file not writable; free space and run it again".split())
    if e.errno in DISK_FULL:
        hint = "free space (files written before are kept; a run continues with --resume)"
    elif e.errno in NOT_WRITABLE:
        hint = "choose a writable folder"
    else:
        hint = "check the path"
    return " ".join(f"{e.strerror or e}{where}; {hint}".split())
