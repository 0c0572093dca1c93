"""`lmsprint eval RUN_DIR --tasks a,b,...`: downstream benchmarks through lm-evaluation-harness.

The arguments (`--tasks`, `--include_path`, `--limit`, `--num_fewshot`, `--batch_size`) are added to the eval
subcommand by `add_lm_eval_arguments`; without `--tasks`, eval keeps its val-split behaviour (cli/train.py). The run's
model is exported to a temporary Hugging Face folder and evaluated by lm-eval's `hf` model
(`lmsprint.evals.lmeval.evaluate_model`); the results table is printed and the results are written to a new file
under `<run_dir>/evals/`, never over an earlier one. lm-eval is the optional extra `lmsprint[evals]`: without it
the command says which pip command installs it.
"""

from __future__ import annotations

import argparse
import math

from .. import rundir
from ..errors import UserError
from ..evals.lmeval import evaluate_model
from ..hw import resolve_device
from ..training.artifacts import load_run_weights, run_tokenizer_info


def add_lm_eval_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("downstream benchmarks (lm-evaluation-harness, pip install 'lmsprint[evals]')")
    g.add_argument("--tasks", default=None, metavar="A,B,...",
                   help="run these lm-eval tasks (e.g. hellaswag,arc_easy,lambada_openai) instead of the val split")
    g.add_argument("--include_path", default=None, metavar="DIR", help="a folder of local lm-eval task YAMLs")
    g.add_argument("--limit", default=None, metavar="N",
                   help="evaluate the first N examples of each task (a fraction if < 1)")
    g.add_argument("--num_fewshot", type=int, default=None, metavar="K", help="few-shot examples per prompt")
    g.add_argument("--batch_size", default="1", metavar="B", help="lm-eval batch size, or 'auto' (default: 1)")
    p.add_argument("--checkpoint", default=None, metavar="NAME",
                   help="a file of the run's checkpoints/ folder (default: the run's latest weights)")


def _limit(v):
    if v is None:
        return None
    try:
        x = float(v)
    except ValueError:
        x = -1.0
    if not math.isfinite(x) or x <= 0:
        raise UserError(f"--limit '{v}' is not a positive number; use e.g. --limit 100 (examples) or --limit 0.1")
    return int(x) if x >= 1 and x == int(x) else x


def _batch_size(v: str):
    if str(v).startswith("auto"):
        return v
    if not str(v).isdigit() or int(v) < 1:
        raise UserError(f"--batch_size '{v}' is not a positive integer or 'auto'; use e.g. --batch_size 8")
    return int(v)


def run_lm_eval_command(args) -> int:
    limit, batch_size = _limit(args.limit), _batch_size(args.batch_size)
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise UserError(f"--num_fewshot {args.num_fewshot} is negative; use 0 or more")
    run_dir = rundir.resolve_run_dir(args.run_dir, args.results_base_folder)
    rundir.check_links(run_dir)  # the results are written into evals/ at the end: a link is refused first
    cfg = rundir.read_config(run_dir)
    device = resolve_device(args.device)
    info = run_tokenizer_info(run_dir, cfg)
    state_dict, step, _ = load_run_weights(run_dir, args.checkpoint, cfg.model)  # checked: shapes, finite
    _, table, path = evaluate_model(cfg.model, state_dict, info, run_dir, args.tasks,
                                    include_path=args.include_path, limit=limit, num_fewshot=args.num_fewshot,
                                    batch_size=batch_size, device=device)
    print(f"{run_dir} @ step {step}")
    print(table)
    print(f"results: {path}")
    return 0
