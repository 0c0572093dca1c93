"""The `lmsprint train`, `lmsprint eval` and `lmsprint generate` subcommands (arguments and what they run).

- train: `--config FILE` + every config flag (generated from the config schema) + `--resume RUN_DIR|latest`.
  With --resume the run's own config.yaml is used; flags given alongside may only be the ones whose option says
  `resume_safe` (where/how a run executes or is reported: device, progress bar, logging sinks, checkpoint
  cadence, data location, compile), never ones that could alter its numbers.
- eval: `lmsprint eval RUN_DIR|latest [--eval_tokens N|full] [--device D] [--checkpoint NAME]` re-evaluates the
  run's latest weights, prints the metrics and writes eval.json in the run directory (and nothing else); with
  `--tasks a,b` it runs lm-evaluation-harness instead (cli/lmeval.py).
- generate: `lmsprint generate RUN_DIR|latest --prompt "..." --max_new_tokens 200 --temperature 0.8
  --top_k 200 --seed 0 --num_samples 1` prints samples from the run's latest weights, with the tokenizer rebuilt
  from the run directory (training/artifacts.py): no data cache, no network.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import keys as K
from .. import rundir
from ..config import FLAGS, RESUME_SAFE, add_flags, build_config, coerce, config_yaml, get_value, set_value
from ..data.loader import val_batches
from ..errors import UserError
from ..hw import autocast_context, resolve_device, resolve_dtype
from ..track.sinks import Sinks, check_available
from ..training.data import load_data
from ..training.distributed import World
from ..training.evaluate import evaluate
from ..training.generate import sample_text
from ..training.guard import RunInterrupted
from ..training.resume import parse_overrides
from ..training.artifacts import load_run_model, run_tokenizer
from ..training.trainer import train
from .lmeval import add_lm_eval_arguments, run_lm_eval_command

_NOT_CONFIG = ("command", "_run", "config", "resume", "print_config", "resume_override")


# ---------------------------------------------------------------------------------------------------- train


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=None,
                   help="YAML/TOML file of flag values (flat or nested); CLI flags override it")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue a run in its own directory: the directory or 'latest'")
    p.add_argument("--resume_override", metavar="NAMES", default=None,
                   help="with --resume: option names (comma-separated, or 'dataset' for other data) that may differ "
                        "from the checkpoint's, e.g. lr,dataset; without it such a resume is refused")
    p.add_argument("--print_config", action="store_true",
                   help="print the resolved configuration (preset < --config file < flags) as YAML and exit")
    add_flags(p)


def _cli_values(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}


def resume_config(run_dir: str, cli_values: dict, overrides=frozenset()):
    """The run's saved config with the harmless CLI overrides (and those named in `overrides`) applied; UserError
    for any other change."""
    cfg = rundir.read_config(run_dir)
    changed = []
    for name, raw in cli_values.items():
        if name not in FLAGS:
            continue
        value = coerce(name, raw)
        if name in RESUME_SAFE or name in overrides:
            set_value(cfg, name, value)
        elif value != get_value(cfg, name):
            changed.append(f"--{name}")
    if changed:
        raise UserError(f"--resume continues {run_dir} with its own config; {', '.join(changed)} would change the "
                        f"run (only {', '.join(sorted('--' + s for s in RESUME_SAFE if s != 'results_base_folder'))}"
                        " may be given); start a new run instead, or accept the change with --resume_override "
                        f"{','.join(c.lstrip('-') for c in changed)}")
    return cfg.validate()


def run_train(args) -> int:
    values = _cli_values(args)
    overrides = parse_overrides(args.resume_override)
    if overrides and not args.resume:
        raise UserError("--resume_override only applies with --resume; drop it or add --resume RUN_DIR")
    if args.resume:
        if args.config:
            raise UserError("--config cannot be combined with --resume (a resumed run uses its own config.yaml); "
                            "drop --config")
        base = values.get("results_base_folder", get_value(build_config({}), "results_base_folder"))
        run_dir = rundir.resolve_run_dir(args.resume, base)
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 holds the lock for all ranks
            rundir.lock_run_dir(run_dir)  # a run another process is training is refused here, in one line
        summary = rundir.read_summary(run_dir) or {}
        if summary.get("status") == "complete":
            raise UserError(f"run {run_dir} is already complete; start a new run instead of --resume")
        cfg = resume_config(run_dir, values, overrides)
        if not rundir.has_checkpoint(run_dir):
            raise UserError(f"checkpoint {rundir.checkpoint_path(run_dir)} is missing or corrupt (no such file); the "
                            "run stopped before its first checkpoint: start a new run instead of --resume")
    else:
        run_dir = None
        cfg = build_config(values, args.config)
        rundir.check_run_name(cfg)  # a name that is no plain folder name is refused before any work
    if args.print_config:
        print(config_yaml(cfg), end="")
        return 0
    check_available(cfg)  # a missing sink package is reported before any run directory is touched
    try:
        train(cfg, Sinks, resume_dir=run_dir, resume_override=overrides)
    except RunInterrupted as e:  # a stop signal: checkpoint saved, summary `interrupted`
        print(f"lmsprint: stopped: {e}", file=sys.stderr)
        return e.exit_code
    return 0


# ---------------------------------------------------------------------------------------------------- eval/generate


def _add_run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory or 'latest'")
    p.add_argument("--results_base_folder", default="./exps", help="where 'latest' is looked up (default: ./exps)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")


def load_run(spec: str, base: str, device_spec: str, checkpoint=None):
    """(run_dir, cfg, model on device in eval mode, step, device) of a run's latest weights (or `checkpoint`)."""
    run_dir = rundir.resolve_run_dir(spec, base)
    cfg = rundir.read_config(run_dir)
    device = resolve_device(device_spec)
    model, step = load_run_model(run_dir, cfg, checkpoint, device)
    return run_dir, cfg, model, step, device


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    _add_run_arg(p)
    p.add_argument("--eval_tokens", default="full", metavar="N|full",
                   help="evaluate on the first N val tokens, or the whole val split (default: full)")
    add_lm_eval_arguments(p)


def _parse_eval_tokens(v: str):
    if str(v).lower() == "full":
        return None
    try:
        n = int(float(v))
    except ValueError:
        n = 0
    if n <= 0:
        raise UserError(f"--eval_tokens '{v}' is not a positive number of tokens or 'full'; use e.g. --eval_tokens "
                        "65536 or --eval_tokens full")
    return n


def run_eval(args) -> int:
    if args.tasks is not None:  # downstream benchmarks through lm-eval instead of the val split
        return run_lm_eval_command(args)
    max_tokens = _parse_eval_tokens(args.eval_tokens)
    run_dir, cfg, model, step, device = load_run(args.run_dir, args.results_base_folder, args.device, args.checkpoint)
    cfg.train.device = device
    world = World(device=device)
    _, tok, _, val_tokens = load_data(cfg, world, progress=False)
    batches = val_batches(val_tokens, cfg.model.sequence_length, cfg.train.batch_size, max_tokens=max_tokens)
    ctx = autocast_context(device, resolve_dtype(cfg.train.dtype, device))
    res = evaluate(model, batches, tok.token_bytes(), device, ctx, world)
    out = {"run_dir": run_dir, "step": step, "eval_tokens_requested": max_tokens or "full",
           **res, "device": device, "evaluated_at": rundir.now_iso()}
    rundir.write_eval(run_dir, out)
    print(f"{run_dir} @ step {out['step']}: " + "  ".join(
        f"{m.key} {m.fmt.format(res[m.key])}" for m in K.VAL_METRICS) + f"  ({res[K.EVAL_TOKENS]:,} tokens)")
    return 0


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    _add_run_arg(p)
    p.add_argument("--prompt", default="", help="text to continue (default: start of text)")
    p.add_argument("--max_new_tokens", type=int, default=200, help="tokens to generate (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default: 0.8)")
    p.add_argument("--top_k", type=int, default=200, help="sample among the k most likely tokens; 0 = all "
                   "(default: 200)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--num_samples", type=int, default=1, help="number of samples (default: 1)")


def run_generate(args) -> int:
    if args.max_new_tokens < 0 or args.num_samples < 1 or args.temperature < 0 or args.top_k < 0:
        raise UserError("--max_new_tokens, --temperature and --top_k must be >= 0 and --num_samples >= 1")
    run_dir, cfg, model, _, device = load_run(args.run_dir, args.results_base_folder, args.device)
    tok = run_tokenizer(run_dir, cfg)  # from the run directory: no data preparation, no network
    texts = sample_text(model, tok, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k or None, seed=args.seed, device=device, num_samples=args.num_samples,
                        ctx=autocast_context(device, resolve_dtype(cfg.train.dtype, device)))
    for i, t in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1} ---")
        print(t)
    sys.stdout.flush()
    return 0
