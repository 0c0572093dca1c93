"""`lmsprint sweep --grid FLAG=V1,V2 --seeds 0,1 [--name N] [--dry_run] -- <train flags>`: the command-line part
(the pass-through train flags, the final comparison table and the exit status: 1 if any run failed; the flags are
`arguments.SweepOptions`).
Planning, validation and running the training subprocesses are in track/sweep.py."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from ..config import FLAGS, SuggestingParser
from ..errors import plural
from ..track import sweep as S
from ..track.report import compare
from .arguments import add_train_arguments  # the pass-through flags are exactly `lmsprint train`'s


def parse_train_args(argv: list[str]) -> tuple[dict, Optional[str]]:
    """The pass-through train flags -> (flag values as typed, --config file)."""
    p = SuggestingParser(prog="lmsprint sweep -- <train flags>", add_help=False)
    add_train_arguments(p)
    ns = p.parse_args(argv)
    # only the flags typed appear (config flag defaults are SUPPRESS); --resume is the train command's own option
    values = {k: v for k, v in vars(ns).items() if k in FLAGS}
    S.check_train_values({**values, "resume": getattr(ns, "resume", None)})
    return values, getattr(ns, "config", None)


def run_sweep(args: argparse.Namespace) -> int:
    grid = S.parse_grid(args.grid)
    seeds = S.parse_seeds(args.seeds)
    train_args = list(args.train_args or [])
    if train_args and train_args[0] == "--":
        train_args = train_args[1:]
    train_values, config_file = parse_train_args(train_args)
    points = S.plan(grid, seeds)
    base_cfg = S.validate_points(points, train_values, config_file)
    name = S.check_name(args.name or S.default_name(grid))
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
