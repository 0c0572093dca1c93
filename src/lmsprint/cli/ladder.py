"""`lmsprint ladder --at BUDGET --rungs 1/16,1/8,1/4 --seeds 2 [--parallel N] [--name N] [--no_branch]
[--dry_run] -- <train flags>`: the command-line part (arguments, the pass-through train flags, the rung table at
the end and the exit status: 1 if any run failed). Planning, forks and running the training processes are in
track/ladder.py."""

from __future__ import annotations

import argparse
import statistics
import sys

from .. import keys as K
from ..errors import UserError, plural
from ..track import ladder as L
from ..track.forecast import fmt_budget
from ..track.discover import load_run
from ..track.report import text_table
from .arguments import parse_pass_through  # the pass-through flags are exactly `lmsprint train`'s


def rung_table(plan: L.Plan, results: dict) -> str:
    """One row per rung: its budget, how it was trained, the complete runs and their final val loss."""
    rows = []
    for r in plan.rungs:
        tasks = [t for t in plan.tasks if t.rung is r]
        vals = []
        for t in tasks:
            outcome, d = results.get(t.name, (None, None))
            if d and outcome in ("complete", "skipped"):
                v = load_run(d).final.get(K.VAL_LOSS)
                if v is not None:
                    vals.append(v)
        how = f"branched at {tasks[0].branch_step:,}" if tasks[0].source else "trained on its own"
        shown = "-" if not vals else f"{statistics.fmean(vals):.4f}" + (
            f" ± {statistics.stdev(vals):.4f}" if len(vals) > 1 else "")
        rows.append([str(r.fraction), fmt_budget(plan.kind, r.budget), how, f"{len(vals)}/{len(tasks)}", shown])
    return text_table(["rung", "budget", "how", "complete", "val loss mean ± sd"], rows)


def run_ladder(args: argparse.Namespace) -> int:
    if args.at is None:
        raise UserError("--at BUDGET is required: the target the rungs are fractions of, e.g. --at 25000 or --at 3h")
    train_args, values, config_file = parse_pass_through(args.train_args, "ladder", L.check_train_values)
    plan = L.plan_ladder(args.at, args.rungs, args.seeds, values, config_file, args.name, args.no_branch)
    rungs = ", ".join(f"{r.fraction} = {fmt_budget(plan.kind, r.budget)}" for r in plan.rungs)
    unit = "steps" if plan.kind == "iterations" else "of training time"
    cost, full = plan.cost()
    print(f"ladder {plan.name}: {len(plan.rungs)} rungs of {fmt_budget(plan.kind, plan.target)} ({rungs}) x "
          f"{plural(len(plan.seeds), 'seed')} in {plan.folder}" + (f", {args.parallel} at a time" if args.parallel > 1 else ""),
          flush=True)
    if plan.branched:
        print(f"branched (wsd): per seed, the longest rung runs in full and each shorter rung's cool-down starts "
              f"from its checkpoint; warmup {plan.warmup_steps} steps in every rung (--warmup_steps); "
              f"{fmt_budget(plan.kind, cost)} {unit} per seed instead of {fmt_budget(plan.kind, full)}", flush=True)
    if plan.warmup_steps is not None and plan.kind == "iterations":
        print(f"a run at the target with this schedule: lmsprint train ... --iterations "
              f"{int(plan.target)} --warmup_steps {plan.warmup_steps}", flush=True)
    results = L.run_ladder(plan, values, config_file, train_args, parallel=args.parallel, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    failed = [n for n, (o, _d) in results.items() if o in ("failed", "blocked")]
    print()
    print(rung_table(plan, results))
    print(f"\nforecast: lmsprint forecast {plan.folder} [other ladders ...] --at "
          f"{fmt_budget(plan.kind, plan.target).replace(',', '')}")
    if failed:
        print(f"{len(failed)} run(s) did not complete: {', '.join(failed)}; rerun the same command to continue them",
              file=sys.stderr)
        return 1
    return 0
