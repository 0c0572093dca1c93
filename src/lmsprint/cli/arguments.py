"""Every subcommand's arguments: each flag defined once, as an `option(...)` field of an options dataclass, with
every fact about it (help, type, bounds, choices, check, keywords, metavar) — the same machinery as the config
tree's train flags (config/options.py). `add_<command>_arguments(parser)` builds each subcommand's flags from them
(`config.flags.add_options` / `add_flags`), so a value is typed and checked while parsing by the rules train's
flags follow (type, finiteness, range, ASCII digits) and a bad one is one line, exit 2, before any work.
`parse_pass_through`: the train flags `lmsprint sweep` and `ladder` pass to their runs (after `--`), parsed as
`lmsprint train` parses them.

To add a flag to a subcommand, add a field to its dataclass, e.g. in `CompareOptions`:
    alpha: Optional[float] = option(None, "the significance level", check=positive)
It then parses, checks, shows in --help and is fed bad numbers by the tests (tests/test_cli_values.py) with no
other edit. A new subcommand: a dataclass, an `add_<name>_arguments` here and an entry in `cli.COMMANDS`.

Light on purpose (the config package and `bench/options.py`, no torch): the parse path of every command, its
--help and `train --print_config` import only this; the commands' modules (cli/train.py, ...) import the
training stack when they run.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Callable, Optional

from .. import keys as K
from ..bench.options import add_measure_arguments
from ..config import FLAGS, SuggestingParser, add_flags, option
from ..config.flags import add_options
from ..config.options import (INT_MAX, budget_check, convert, field_problem, fractions_check, nonneg, positive,
                              seed_list_check)
from ..config.sampling import SamplingOptions
from ..errors import ConfigError

# where `train --print_config` goes: the config resolution alone (cli/train_config.py), never the training stack
PRINT_CONFIG = "lmsprint.cli.train_config:print_config"


# ---------------------------------------------------------------------------------------------------- checks


def _limit(v: float) -> Optional[str]:
    if not v > 0:
        return "must be > 0: a number of examples (e.g. 100) or a fraction of each task (e.g. 0.1)"
    return None if v < 1 or v.is_integer() else "must be a whole number of examples when >= 1, or a fraction < 1"


def _lm_batch_size(v: str) -> Optional[str]:
    m = re.fullmatch(r"auto(?::([0-9]+))?|([0-9]+)", v.strip())
    n = (m.group(1) or m.group(2)) if m else None
    if not m or (n is not None and not 0 < int(n) <= INT_MAX):
        return "must be a positive integer, 'auto', or 'auto:N' (lm-eval re-picks the largest batch N times)"
    return None


def _target(v: str) -> Optional[str]:
    try:
        K.parse_target(v)
    except ValueError as e:
        return str(e)
    return None


def _seeds(v: str) -> Optional[str]:
    """Every comma-separated item keeps the rules of train's `seed` option."""
    _, f, tp = FLAGS["seed"]
    items = [s for s in v.split(",") if s.strip()]
    if not items:
        return "is empty; e.g. --seeds 0,1,2"
    for s in items:
        try:
            msg = field_problem(f, tp, convert("seed", f, tp, s))
        except ConfigError:
            msg = "is not an integer"
        if msg:
            return f"seed '{s.strip()}' {msg}; use e.g. --seeds 0,1,2"
    return None


# ---------------------------------------------------------------------------------------------------- options


@dataclass
class RunOptions:
    """Where a run's weights are found and run (eval, generate)."""

    results_base_folder: str = option("./exps", "where 'latest' is looked up")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")


@dataclass
class EvalOptions(RunOptions):
    eval_tokens: Optional[int] = option(None, "evaluate on the first N val tokens, or the whole val split",
                                        keywords={"full": None}, check=positive, metavar="N|full")
    checkpoint: Optional[str] = option(None, "a file of the run's checkpoints/ folder (default: the run's latest "
                                       "weights)", metavar="NAME")


LM_EVAL_GROUP = "downstream benchmarks (lm-evaluation-harness, pip install 'lmsprint[evals]')"


@dataclass
class LmEvalOptions:
    tasks: Optional[str] = option(None, "run these lm-eval tasks instead of the val split: names or globs, e.g. "
                                  "hellaswag,arc_easy or 'arc_*'", metavar="A,B,...")
    include_path: Optional[str] = option(None, "a folder of local lm-eval task YAMLs (its tasks are matched by "
                                         "--tasks, globs included)", metavar="DIR")
    limit: Optional[float] = option(None, "evaluate the first N examples of each task (a fraction if < 1)",
                                    check=_limit, metavar="N")
    num_fewshot: Optional[int] = option(None, "few-shot examples per prompt", check=nonneg, metavar="K")
    batch_size: str = option("1", "lm-eval batch size: B, 'auto', or 'auto:N' (re-pick the largest batch N times)",
                             check=_lm_batch_size, numeric=True, metavar="B|auto|auto:N")


@dataclass
class GenerateOptions(SamplingOptions, RunOptions):
    """The run's options, then the sampling options (shared with the Python API's generate), then these."""

    num_samples: int = option(1, "number of samples", check=positive)


@dataclass
class ExportOptions:
    checkpoint: Optional[str] = option(None, "a file of the run's checkpoints/ folder, e.g. step_1000.pt (default: "
                                       "the run's latest weights, model.safetensors)", metavar="NAME")
    dtype: str = option("float32", "weights dtype", choices=["float32", "bfloat16", "float16"])
    results_base_folder: str = option("./exps", "where 'latest' is looked up")
    force: bool = option(False, "write into an existing non-empty OUT_DIR (or '' = the current folder): the export's "
                         "files replace files of the same names there, other files stay")


@dataclass
class CompareOptions:
    out: Optional[str] = option(None, "report folder (default: ./reports/compare-<timestamp>; an existing non-empty "
                                "folder is refused, never overwritten)", metavar="DIR")
    metric: str = option(K.VAL_LOSS, "final metric the arms are tested on", choices=list(K.VAL_KEYS))
    reference: Optional[str] = option(None, "test every arm against this one (its label as shown, or a glob matching "
                                      "the names or paths of its runs, e.g. 'base_s*') instead of against the best "
                                      "arm by mean", metavar="ARM_OR_RUN_GLOB")
    target: Optional[str] = option(None, "e.g. val/loss=3.28: each arm's one-sided p that its mean final METRIC is "
                                   "at or below VALUE (at or above for val/acc; scipy.stats.ttest_1samp, "
                                   "modded-nanogpt's record rule: p < 0.01) and its time to target (the first "
                                   "periodic eval reaching it: median [min-max], runs that reached it); default: the "
                                   "target every run recorded with `train --target`, if they share one",
                                   check=_target, metavar="METRIC=VALUE")
    only_complete: bool = option(False, "skip runs whose status is not complete")
    no_report: bool = option(False, "print the table only; write no report folder")


@dataclass
class SweepOptions:
    grid: list = option([], "a train flag and the values to sweep (repeatable; the sweep is the cross product)",
                        metavar="FLAG=V1,V2")
    seeds: str = option("0", "comma-separated --seed values run for every grid point", check=_seeds, numeric=True,
                        metavar="S1,S2,...")
    name: Optional[str] = option(None, "sweep folder under --results_base_folder (default: sweep-<grid flags>); "
                                 "rerun with the same name to resume")
    parallel: int = option(1, "start runs in batches of N, all runs of a batch together, the next batch when the "
                           "whole batch has ended; runs are seed-major (every arm's seed 0, then every arm's seed "
                           "1, ...), and with N >= the number of arms every batch holds whole seeds, so the arms of "
                           "a seed share the machine's load (give each run -- --threads 1); each run's output in "
                           "<sweep folder>/<run>.log (1 = one after another)", check=positive, metavar="N")
    dry_run: bool = option(False, "print the plan and the commands, run nothing")


@dataclass
class LadderOptions:
    at: Optional[str] = option(None, "the target budget the rungs are fractions of: iterations (e.g. 25000) or a "
                               "duration (3h); required", check=budget_check, numeric=True, metavar="BUDGET")
    rungs: str = option("1/16,1/8,1/4,1/2", "fractions of the target, comma-separated", check=fractions_check,
                        numeric=True, metavar="F1,F2,...")
    seeds: str = option("2", "a number of seeds N (seeds 0..N-1) or a list such as 0,3,7", check=seed_list_check,
                        numeric=True, metavar="N|S1,S2,...")
    name: Optional[str] = option(None, "ladder folder under --results_base_folder (default: ladder-<run name>-at"
                                 "<BUDGET>); rerun with the same name to continue it")
    parallel: int = option(1, "run N trainings at a time, each one's output in <folder>/<run>.log", check=positive,
                           metavar="N")
    no_branch: bool = option(False, "train every rung on its own even with --scheduler wsd")
    dry_run: bool = option(False, "print the plan and the commands, run nothing")


@dataclass
class ForecastOptions:
    at: Optional[str] = option(None, "the budget to forecast: iterations (e.g. 25000) for runs budgeted by "
                               "--iterations, a duration (e.g. 3h) for runs budgeted by --time_budget; required",
                               check=budget_check, numeric=True, metavar="BUDGET")
    metric: str = option(K.VAL_LOSS, "the final metric to forecast",
                         choices=[m.key for m in K.VAL_METRICS if m.lower_is_better])
    json: bool = option(False, "print a JSON list, one object per arm: arm, forecast, low, high, p_best, rungs, "
                        "seeds, backtest_error (+ status, message, budget_unit, fit)")
    plot: Optional[str] = option(None, "where to write the plot (PNG; default: ./reports/forecast-<timestamp>.png)",
                                 metavar="PATH")
    no_plot: bool = option(False, "write no plot")


@dataclass
class BenchOptions:
    """`lmsprint bench`'s options beyond one measurement's (`bench/options.py`): output, the suite, --memory."""

    json: bool = option(False, "print one machine-readable JSON line")
    suite: Optional[str] = option(None, "run the benchmark suite (one table)", choices=[None, "gpu", "cpu"])
    only: str = option("", "suite: comma-separated substrings of config names to run")
    config_timeout: Optional[float] = option(None, "suite: seconds per config (default: gpu 150, cpu 60)",
                                             check=positive)
    suite_budget: Optional[float] = option(None, "suite: total seconds; later configs are skipped as rows (default: "
                                           "gpu 450, cpu 110)", check=positive)
    prewarm: Optional[int] = option(None, "suite: compile the compiled configs this many at a time in parallel "
                                    "first, so the timed pass compiles from warm caches (default on gpu: one per "
                                    "40 GB of GPU memory, at most 3; 0 = off)", check=nonneg)
    prewarm_only: bool = option(False, "suite: only the parallel compile pass (e.g. while the CUDA tests run); "
                                "prints each config's cold compile time")
    out: Optional[str] = option(None, "suite: folder for <date>-<device>.json and .md (the committed results live in "
                                "bench/results)", metavar="DIR")
    memory: bool = option(False, "print the computed per-GPU memory table (124M/350M/1.3B shapes, ddp and fsdp) at "
                          "--batch_size x --sequence_length under bf16 autocast, --opt's state")
    world_size: int = option(8, "--memory: GPUs the fsdp rows shard over", check=positive)
    isolate: Optional[str] = option(None, "suite: run each config in its own subprocess (default on gpu) or in this "
                                    "process after torch._dynamo.reset() (default on cpu)",
                                    choices=[None, "subprocess", "inprocess"])


@dataclass
class PrepareOptions:
    config: Optional[str] = option(None, "YAML/TOML config file whose data options are used", metavar="FILE")
    bench_tokenizer: bool = option(False, "measure 1-process vs --num_proc-process tokenization speed on 10 MB of "
                                   "text, then exit")
    quiet: bool = option(False, "no progress bars")
    verify: bool = option(False, "hash the token files in full and compare them with the manifest's SHA-256 (opening "
                          "them checks only sampled blocks of files over 32 MiB)")


# ---------------------------------------------------------------------------------------------------- parsers


def parse_pass_through(argv: list[str], command: str, check: Callable[[dict], None]) -> tuple[list[str], dict,
                                                                                            Optional[str]]:
    """The train flags given to `lmsprint sweep` / `ladder` after `--` -> (those arguments less the `--`, the flag
    values as typed, the --config file). They parse exactly as `lmsprint train`'s; `check(values)` (the values and
    `resume`) refuses those the command sets itself."""
    args = list(argv or [])
    if args and args[0] == "--":
        args = args[1:]
    p = SuggestingParser(prog=f"lmsprint {command} -- <train flags>", add_help=False)
    add_train_arguments(p)
    ns = p.parse_args(args)
    # only the flags typed appear (config flag defaults are SUPPRESS); --resume is the train command's own option
    values = {k: v for k, v in vars(ns).items() if k in FLAGS}
    check({**values, "resume": getattr(ns, "resume", None)})
    return args, values, getattr(ns, "config", None)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """--config, --resume, --resume_override, --print_config and every config flag (as raw strings: the preset,
    the config file and the flags are layered and checked together by `build_config`)."""
    p.add_argument("--config", metavar="FILE", default=None,
                   help="YAML/TOML file of flag values (flat or nested); CLI flags override it")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue a run in its own directory: the directory or 'latest'")
    p.add_argument("--resume_override", metavar="NAMES", default=None,
                   help="with --resume: option names (comma-separated, or 'dataset' for other data) that may differ "
                        "from the checkpoint's, e.g. lr,dataset; without it such a resume is refused")
    p.add_argument("--print_config", dest="_run", action="store_const", const=PRINT_CONFIG,
                   help="print the resolved configuration (preset < --config file < flags) as YAML and exit")
    add_flags(p)


def _add_run_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory or 'latest'")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    _add_run_dir(p)
    add_options(p, EvalOptions)
    add_options(p, LmEvalOptions, LM_EVAL_GROUP)


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    _add_run_dir(p)
    add_options(p, GenerateOptions)


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    _add_run_dir(p)
    p.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write (must not exist or be empty, unless --force)")
    add_options(p, ExportOptions)


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    # the method itself (track/stats.py METHOD) is printed under the tables: the parse path stays free of track/
    p.epilog = ("Runs are ranked only against runs whose final eval scored the same val set (val token file hash, "
                "tokens evaluated, sequence length, tokenizer); others get tables of their own. Runs differing only "
                "by seed/data_seed form an arm (mean ± sample sd over seeds); each arm is tested against the "
                "reference (or the best arm) with Welch's or the paired t-test and Holm's correction; fewer than 3 "
                "seeds: too few to call.")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run directories, folders holding runs (searched recursively) or glob patterns")
    add_options(p, CompareOptions)


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    add_options(p, SweepOptions)
    p.add_argument("train_args", nargs="*", metavar="-- TRAIN_FLAGS",
                   help="flags passed to every `lmsprint train` (after a literal --)")


def add_ladder_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("With --scheduler wsd and an iteration target the rungs branch from one stable-phase run per seed "
                "(each rung's cool-down starts from a checkpoint of the longest rung; the warmup is counted in "
                "steps, --warmup_steps, the same in every rung): the ladder costs about the longest rung plus the "
                "cool-downs. Rerun the same command to continue an interrupted ladder. Then: lmsprint forecast "
                "FOLDER [FOLDER ...] --at BUDGET.")
    add_options(p, LadderOptions)
    p.add_argument("train_args", nargs="*", metavar="-- TRAIN_FLAGS",
                   help="flags passed to every `lmsprint train` (after a literal --)")


def add_forecast_arguments(p: argparse.ArgumentParser) -> None:
    # the method itself is described in track/forecast.py's docstring and docs/forecast.md (the parse path stays
    # free of track/, which imports numpy and scipy)
    p.epilog = ("An arm is the runs whose configs differ only in seed, data_seed and the budget (--iterations or "
                "--time_budget). Per arm: L(x) = E + A*x^-alpha fitted to every run's final metric (scipy "
                "least_squares with bounds), an 80% interval from a bootstrap over seeds and rungs, a backtest (the "
                "fit without the largest rung predicts it), and checks that the rungs are in the power-law regime: "
                "an arm that is not is widened or refused with the rung to add. Fewer than 3 budgets, a fit that "
                "does not converge or one seed per rung: no number.")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run directories, folders holding runs (a ladder's folder) or glob patterns")
    add_options(p, ForecastOptions)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    g = add_measure_arguments(p)
    add_options(p, BenchOptions, g)


def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    add_flags(p, sections=("run", "data"))
    add_options(p, PrepareOptions)


def lm_eval_batch_size(v: str):
    """--batch_size as lm-eval takes it: an int, or the 'auto' / 'auto:N' string."""
    return int(v) if v.strip().isdigit() else v.strip()


def lm_eval_limit(v: Optional[float]):
    """--limit as lm-eval takes it: a count (int) when >= 1, else a fraction."""
    return None if v is None else (int(v) if v >= 1 else v)

