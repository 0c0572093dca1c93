"""What `lmsprint train`, `lmsprint eval` and `lmsprint generate` run (their arguments: cli/arguments.py).

- train: the config of `train_config.train_config` (a new run, or `--resume RUN_DIR|latest` with the run's own
  config.yaml), then `training.trainer.train`. A stop signal ends it with `lmsprint: stopped: ...` on rank 0 only.
- eval: `lmsprint eval RUN_DIR|latest [--eval_tokens N|full] [--device D] [--checkpoint NAME]` re-evaluates the
  run's latest weights (with progress: a bar on a terminal, quarter lines in a log), prints the metrics and writes
  eval.json in the run directory (and nothing else); with
  `--tasks a,b` it runs lm-evaluation-harness instead (cli/lmeval.py).
- generate: `lmsprint generate RUN_DIR|latest --prompt "..." --max_new_tokens 200 --temperature 0.8
  --top_k 200 --seed 0 --num_samples 1` prints samples from the run's latest weights, with the tokenizer rebuilt
  from the run directory (training/artifacts.py): no data cache, no network. A sample that ends at the
  end-of-text token before --max_new_tokens says so on stderr.
"""

from __future__ import annotations

import sys

from .. import keys as K
from .. import rundir
from ..data.loader import n_val_windows, val_batches
from ..errors import plural
from ..hw import autocast_context, resolve_device, resolve_dtype
from ..track.sinks import Sinks, check_available
from ..training.data import load_data
from ..training.distributed import World, launched_rank, quiet_under_torchrun
from ..training.evaluate import evaluate
from ..training.generate import samples
from ..training.guard import RunInterrupted
from ..training.report import eval_progress
from ..training.artifacts import load_run_model, run_tokenizer
from ..training.trainer import train
from .lmeval import run_lm_eval_command
from .train_config import train_config

def run_train(args) -> int:
    cfg, run_dir, overrides = train_config(args)
    check_available(cfg)  # a missing sink package is reported before any run directory is touched
    quiet_under_torchrun()
    try:
        train(cfg, Sinks, resume_dir=run_dir, resume_override=overrides)
    except RunInterrupted as e:  # a stop signal: checkpoint saved, summary `interrupted`
        if launched_rank() == 0:  # every rank stops; rank 0 alone says so
            print(f"lmsprint: stopped: {e}", file=sys.stderr)
        return e.exit_code
    return 0


# ---------------------------------------------------------------------------------------------------- eval/generate


def load_run(spec: str, base: str, device_spec: str, checkpoint=None):
    """(run_dir, cfg, model on device in eval mode, step, device) of a run's latest weights (or `checkpoint`)."""
    run_dir = rundir.resolve_run_dir(spec, base)
    cfg = rundir.read_config(run_dir)
    device = resolve_device(device_spec)
    model, step = load_run_model(run_dir, cfg, checkpoint, device)
    return run_dir, cfg, model, step, device


def run_eval(args) -> int:
    if args.tasks is not None:  # downstream benchmarks through lm-eval instead of the val split
        return run_lm_eval_command(args)
    max_tokens = args.eval_tokens  # None: the whole val split
    run_dir, cfg, model, step, device = load_run(args.run_dir, args.results_base_folder, args.device, args.checkpoint)
    rundir.check_links(run_dir)  # eval.json is written at the end: a link there is refused before the work
    cfg.train.device = device
    world = World(device=device)
    _, tok, _, val_tokens = load_data(cfg, world, progress=False)
    seq, bs = cfg.model.sequence_length, cfg.train.batch_size
    batches = val_batches(val_tokens, seq, bs, max_tokens=max_tokens)
    n = n_val_windows(len(val_tokens), seq, max_tokens)  # progress as a run's final eval shows it
    batches = eval_progress(batches, -(-n // bs), n * seq, "eval", bar=sys.stdout.isatty() and sys.stderr.isatty())
    ctx = autocast_context(device, resolve_dtype(cfg.train.dtype, device))
    res = evaluate(model, batches, tok.token_bytes(), device, ctx, world)
    out = {"run_dir": run_dir, "step": step, "eval_tokens_requested": max_tokens or "full",
           **res, "device": device, "evaluated_at": rundir.now_iso()}
    rundir.write_eval(run_dir, out)
    print(f"{run_dir} @ step {out['step']}: " + "  ".join(
        f"{m.key} {m.format(res[m.key])}" for m in K.VAL_METRICS) + f"  ({res[K.EVAL_TOKENS]:,} tokens)")
    return 0


def run_generate(args) -> int:
    run_dir, cfg, model, _, device = load_run(args.run_dir, args.results_base_folder, args.device)
    tok = run_tokenizer(run_dir, cfg)  # from the run directory: no data preparation, no network
    out = samples(model, tok, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                  top_k=args.top_k or None, seed=args.seed, device=device, num_samples=args.num_samples,
                  ctx=autocast_context(device, resolve_dtype(cfg.train.dtype, device)))
    for i, s in enumerate(out):
        if len(out) > 1:
            print(f"--- sample {i + 1} ---")
        print(s.text, flush=True)
        if s.stopped_at_eot:  # on stderr: stdout stays the text alone
            which = f"sample {i + 1}" if len(out) > 1 else "the sample"
            print(f"lmsprint: {which} stopped at the end-of-text token after {plural(s.new_tokens, 'token')} "
                  f"(--max_new_tokens {args.max_new_tokens})", file=sys.stderr, flush=True)
    return 0
