"""`lmsprint sweep --grid FLAG=V1,V2 --seeds 0,1 [--name N] [--dry_run] -- <train flags>`: the command-line part
(arguments, the pass-through train flags, the final comparison table and the exit status: 1 if any run failed).
Planning, validation and running the training subprocesses are in track/sweep.py."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from ..config import FLAGS, SuggestingParser
from ..errors import UserError
from ..track import sweep as S
from ..track.report import compare
from .train import add_train_arguments  # the pass-through flags are exactly `lmsprint train`'s


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", action="append", default=[], metavar="FLAG=V1,V2",
                   help="a train flag and the values to sweep (repeatable; the sweep is the cross product)")
    p.add_argument("--seeds", default="0", help="comma-separated --seed values run for every grid point (default: 0)")
    p.add_argument("--name", default=None, help="sweep folder under --results_base_folder (default: "
                   "sweep-<grid flags>); rerun with the same name to resume")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="run N points at a time, started together, each one's output in <sweep folder>/<run>.log "
                   "(an equal-time race: N = all runs, with -- --threads 1; default: 1, one after another)")
    p.add_argument("--dry_run", action="store_true", help="print the plan and the commands, run nothing")
    p.add_argument("train_args", nargs="*", metavar="-- TRAIN_FLAGS",
                   help="flags passed to every `lmsprint train` (after a literal --)")


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
    if args.parallel < 1:
        raise UserError(f"--parallel {args.parallel}: must be >= 1 (the number of runs at a time)")
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
    print(f"sweep {name}: {len(points)} runs ({len(points) // len(seeds)} grid points x {len(seeds)} seeds) in "
          f"{sweep_dir}" + (f", {args.parallel} at a time" if args.parallel > 1 else ""), flush=True)
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
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; rerun the same command to retry/resume them",
              file=sys.stderr)
        return 1
    return 0
