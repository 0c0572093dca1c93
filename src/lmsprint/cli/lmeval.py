"""`lmsprint eval RUN_DIR --tasks a,b,...`: downstream benchmarks through lm-evaluation-harness.

The arguments (`--tasks`, `--include_path`, `--limit`, `--num_fewshot`, `--batch_size`) are the eval
subcommand's `arguments.LmEvalOptions`, checked while parsing; without `--tasks`, eval keeps its val-split
behaviour (cli/train.py). The run's model is exported to a temporary Hugging Face folder and evaluated by
lm-eval's `hf` model (`lmsprint.evals.lmeval.evaluate_model`); the results table is printed and the results are
written to a new file under `<run_dir>/evals/`, never over an earlier one. lm-eval is the optional extra `lmsprint[evals]`: without it
the command says which pip command installs it.
"""

from __future__ import annotations

from .. import rundir
from ..evals.lmeval import evaluate_model
from ..hw import resolve_device
from ..training.artifacts import load_run_weights, run_tokenizer_info
from .arguments import lm_eval_batch_size, lm_eval_limit


def run_lm_eval_command(args) -> int:
    limit, batch_size = lm_eval_limit(args.limit), lm_eval_batch_size(args.batch_size)  # checked while parsing
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
