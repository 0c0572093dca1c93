"""`lmsprint sweep --grid FLAG=V1,V2 --seeds 0,1 [--name N] [--dry_run] -- <train flags>`: the command-line part
(the pass-through train flags, the final comparison table and the exit status: 1 if any run failed; the flags are
`arguments.SweepOptions`).
Planning, validation and running the training subprocesses are in track/sweep.py."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import plural
from ..track import sweep as S
from ..track.report import compare
from .arguments import parse_pass_through  # the pass-through flags are exactly `lmsprint train`'s


def run_sweep(args: argparse.Namespace) -> int:
    grid = S.parse_grid(args.grid)
    seeds = S.parse_seeds(args.seeds)
    train_args, train_values, config_file = parse_pass_through(args.train_args, "sweep", S.check_train_values)
    points = S.plan(grid, seeds)
    base_cfg = S.validate_points(points, train_values, config_file)
    name = S.check_name(S.default_name(grid) if args.name is None else args.name)
    sweep_dir = os.path.join(base_cfg.train.results_base_folder, name)
    if not args.dry_run:
        S.write_record(sweep_dir, {"grid": grid, "seeds": seeds, "train_args": train_args,
                                   "points": [p.name for p in points]})
    arms = len(points) // len(seeds)
    batch = len(S.batches(points, args.parallel)[0])
    print(f"sweep {name}: {plural(len(points), 'run')} ({plural(arms, 'grid point')} x {plural(len(seeds), 'seed')}) "
          f"in {sweep_dir}, seed-major" + (f", in batches started together of {batch}" if args.parallel > 1 else ""),
          flush=True)
    if 1 < args.parallel < arms:
        print(f"lmsprint: warning: --parallel {args.parallel} is fewer than the {arms} arms: the arms of one seed "
              f"cannot all start together, so they may run under different load; use --parallel {arms}",
              file=sys.stderr)
    if args.parallel > 1 and not args.dry_run:
        S.prepare_data(points, train_values, config_file)
    results = S.run_sweep_points(points, train_values, config_file, sweep_dir, dry_run=args.dry_run,
                                 parallel=args.parallel)
    if args.dry_run:
        return 0
    failed = [n for n, (o, _d) in results.items() if o == "failed"]
    dirs = [d for _o, d in results.values() if d]
    if dirs:
        print()
        print(compare(dirs).text())
        print(f"plots and report: lmsprint compare {sweep_dir}")
    if failed:
        print(f"{plural(len(failed), 'run')} failed: {', '.join(failed)}; rerun the same command to retry/resume them",
              file=sys.stderr)
        return 1
    return 0
