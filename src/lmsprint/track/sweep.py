"""`lmsprint sweep`: train a grid of flag values x seeds, one subprocess per run, resumable; compare at the end.

    lmsprint sweep --grid label_smoothing=0,0.1 --grid lr=1e-3,3e-3 --seeds 0,1,2 [--name NAME] -- <train flags>

- `--grid FLAG=V1,V2,...` (repeatable): a train flag and its values; the sweep is the cross product of all grids
  and `--seeds`. Grid keys are checked against the config's flags (unknown -> one-line error naming the closest
  flag) and every point's full config is validated before anything runs.
- Runs live in `<results_base_folder>/<sweep name>/` (default name `sweep-<grid keys>`), each with a
  deterministic `--exp_name` made of the grid point and the seed, e.g. `label_smoothing=0.1_seed=2`.
- Resumable: run the same command again and finished runs (summary status "complete") are skipped, an
  interrupted run with a checkpoint is continued with `lmsprint train --resume <its dir>`, and only runs
  never started (or stopped before their first checkpoint) start over.
- Each training is `sys.executable -m lmsprint train ...` in its own process, so one failure (or a crash) does not
  stop the sweep; a Ctrl-C stops the sweep (rerun to resume). At the end the sweep's runs are compared (table,
  seed groups with mean +- sd and the noise rule; see `lmsprint compare`). Exit status 1 if any run failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional

from ..config import FLAGS, SuggestingParser, build_config, coerce, unknown_flag_error
from ..errors import UserError

# flags the sweep sets itself for every run
RESERVED = {"seed": "use --seeds 0,1,2 instead of a seed flag or grid", "exp_name": "the sweep names each run",
            "run_prefix": "the sweep names each run", "resume": "rerun the same sweep command to resume it"}
SWEEP_FILE = "sweep.json"


@dataclass
class Point:
    values: dict          # flag -> raw string value of this grid point
    seed: int

    @property
    def name(self) -> str:
        parts = [f"{k}={_safe(v)}" for k, v in self.values.items()] + [f"seed={self.seed}"]
        return "_".join(parts)


def _safe(v: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+\-]", "-", str(v))


# ---------------------------------------------------------------------------------------------------- parsing


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """['label_smoothing=0,0.1', 'lr=1e-3'] -> {'label_smoothing': ['0', '0.1'], 'lr': ['1e-3']} (validated)."""
    grid: dict[str, list[str]] = {}
    for spec in specs or []:
        if "=" not in spec:
            raise UserError(f"--grid '{spec}' is not FLAG=V1,V2,...; e.g. --grid label_smoothing=0,0.1")
        key, _, vals = spec.partition("=")
        key = key.strip().lstrip("-")
        if key in RESERVED:
            raise UserError(f"--grid {key}: {RESERVED[key]}")
        if key not in FLAGS:
            raise unknown_flag_error(key, "grid key")
        if key in grid:
            raise UserError(f"--grid {key} is given twice; list all its values in one --grid {key}=V1,V2")
        values = [v.strip() for v in vals.split(",") if v.strip()]
        if not values:
            raise UserError(f"--grid {key} has no values; e.g. --grid {key}=V1,V2")
        for v in values:
            coerce(key, v)  # UserError naming the flag if a value has the wrong type
        grid[key] = list(dict.fromkeys(values))
    return grid


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds '{text}' is not a comma-separated list of integers; e.g. --seeds 0,1,2")
    if not seeds:
        raise UserError("--seeds is empty; e.g. --seeds 0,1,2")
    return list(dict.fromkeys(seeds))


def _train_parser() -> argparse.ArgumentParser:
    from ..train.commands import add_train_arguments

    p = SuggestingParser(prog="lmsprint sweep -- <train flags>", add_help=False)
    add_train_arguments(p)
    return p


def parse_train_args(argv: list[str]) -> tuple[dict, Optional[str]]:
    """The pass-through train flags -> (flag values as typed, --config file)."""
    ns = _train_parser().parse_args(argv)
    # only the flags typed appear (config flag defaults are SUPPRESS); --resume is the train command's own option
    values = {k: v for k, v in vars(ns).items() if k in FLAGS and k != "resume"}
    for k in RESERVED:
        if k in values or getattr(ns, k, None) is not None:
            raise UserError(f"--{k} cannot be passed to a sweep's runs: {RESERVED[k]}")
    return values, getattr(ns, "config", None)


# ---------------------------------------------------------------------------------------------------- planning


def plan(grid: dict[str, list[str]], seeds: list[int]) -> list[Point]:
    keys = list(grid)
    return [Point(dict(zip(keys, combo)), seed) for combo in itertools.product(*(grid[k] for k in keys))
            for seed in seeds]


def default_name(grid: dict) -> str:
    return "sweep-" + ("-".join(grid) if grid else "seeds")


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _exp_name(run_dir: str) -> Optional[str]:
    import yaml

    try:
        with open(os.path.join(run_dir, "config.yaml")) as fh:
            d = yaml.safe_load(fh) or {}
        return (d.get("train") or {}).get("exp_name")
    except (OSError, yaml.YAMLError, AttributeError):
        return None


def existing_runs(sweep_dir: str) -> dict[str, list[str]]:
    """exp_name -> run directories in the sweep folder that were started for it (oldest first)."""
    out: dict[str, list[str]] = {}
    if not os.path.isdir(sweep_dir):
        return out
    for d in sorted(os.listdir(sweep_dir)):
        path = os.path.join(sweep_dir, d)
        if os.path.isfile(os.path.join(path, "config.yaml")):
            name = _exp_name(path)
            if name:
                out.setdefault(name, []).append(path)
    for name in out:
        out[name].sort(key=lambda p: os.path.getmtime(os.path.join(p, "config.yaml")))
    return out


def status_of(run_dir: str) -> str:
    return (_read_json(os.path.join(run_dir, "summary.json")) or {}).get("status") or "no summary"


def has_checkpoint(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, "checkpoints", "latest.pt"))


def decide(point: Point, runs: dict[str, list[str]]) -> tuple[str, Optional[str]]:
    """('skip', dir) for a complete run, ('resume', dir) for an interrupted one with a checkpoint, else ('new', None)."""
    dirs = runs.get(point.name, [])
    for d in dirs:
        if status_of(d) == "complete":
            return "skip", d
    for d in reversed(dirs):
        if has_checkpoint(d):
            return "resume", d
    return "new", None


# ---------------------------------------------------------------------------------------------------- running


def _flag_args(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        out += [f"--{k}", str(v)]
    return out


def _resume_safe() -> set:
    try:
        from ..train.commands import RESUME_SAFE
    except ImportError:
        return set()
    return set(RESUME_SAFE) - {"results_base_folder"}


def train_command(point: Point, train_values: dict, config_file: Optional[str], sweep_dir: str,
                  resume_dir: Optional[str]) -> list[str]:
    cmd = [sys.executable, "-m", "lmsprint", "train"]
    if resume_dir:
        safe = _resume_safe()
        return cmd + ["--resume", resume_dir] + _flag_args({k: v for k, v in train_values.items() if k in safe})
    if config_file:
        cmd += ["--config", config_file]
    values = {k: v for k, v in train_values.items() if k not in point.values and k != "results_base_folder"}
    values.update(point.values)
    values.update({"seed": point.seed, "exp_name": point.name, "results_base_folder": sweep_dir})
    return cmd + _flag_args(values)


def run_sweep_points(points: list[Point], train_values: dict, config_file: Optional[str], sweep_dir: str,
                     dry_run: bool = False) -> dict[str, tuple[str, Optional[str]]]:
    """Run every point in order; returns name -> (outcome, run dir). Outcomes: skipped, complete, failed."""
    results: dict[str, tuple[str, Optional[str]]] = {}
    for i, point in enumerate(points, 1):
        runs = existing_runs(sweep_dir)
        action, run_dir = decide(point, runs)
        tag = f"[sweep {i}/{len(points)}] {point.name}"
        if action == "skip":
            print(f"{tag}: complete in {run_dir}, skipped", flush=True)
            results[point.name] = ("skipped", run_dir)
            continue
        cmd = train_command(point, train_values, config_file, sweep_dir, run_dir if action == "resume" else None)
        print(f"{tag}: {'resuming ' + run_dir if action == 'resume' else 'starting'}", flush=True)
        print("  $ " + " ".join(_quote(c) for c in cmd[2:]), flush=True)
        if dry_run:
            results[point.name] = ("planned", run_dir)
            continue
        t0 = time.time()
        proc = subprocess.Popen(cmd)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reaches the child too: let it write its checkpoint/summary, then stop
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            print(f"{tag}: interrupted; rerun the same sweep command to resume", file=sys.stderr, flush=True)
            raise
        after = existing_runs(sweep_dir).get(point.name, [])
        run_dir = run_dir or (after[-1] if after else None)
        ok = rc == 0 and run_dir is not None and status_of(run_dir) == "complete"
        print(f"{tag}: {'complete' if ok else f'FAILED (exit {rc})'} after {time.time() - t0:.0f}s", flush=True)
        results[point.name] = ("complete" if ok else "failed", run_dir)
    return results


def _quote(s: str) -> str:
    return s if re.fullmatch(r"[\w@%+=:,./-]+", s) else "'" + s.replace("'", "'\\''") + "'"


# ---------------------------------------------------------------------------------------------------- CLI


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", action="append", default=[], metavar="FLAG=V1,V2",
                   help="a train flag and the values to sweep (repeatable; the sweep is the cross product)")
    p.add_argument("--seeds", default="0", help="comma-separated --seed values run for every grid point (default: 0)")
    p.add_argument("--name", default=None, help="sweep folder under --results_base_folder (default: "
                   "sweep-<grid flags>); rerun with the same name to resume")
    p.add_argument("--dry_run", action="store_true", help="print the plan and the commands, run nothing")
    p.add_argument("train_args", nargs="*", metavar="-- TRAIN_FLAGS",
                   help="flags passed to every `lmsprint train` (after a literal --)")


def run_sweep(args: argparse.Namespace) -> int:
    grid = parse_grid(args.grid)
    seeds = parse_seeds(args.seeds)
    train_args = list(args.train_args or [])
    if train_args and train_args[0] == "--":
        train_args = train_args[1:]
    train_values, config_file = parse_train_args(train_args)
    points = plan(grid, seeds)
    # validate every point's full config now, not halfway through the sweep
    for pt in points:
        values = {k: v for k, v in train_values.items() if k not in pt.values}
        build_config({**values, **pt.values, "seed": pt.seed}, config_file)
    base_cfg = build_config(dict(train_values), config_file)
    name = args.name or default_name(grid)
    if not re.fullmatch(r"[\w.+=-]+", name):
        raise UserError(f"--name '{name}' must be a plain folder name (letters, digits, . _ - + =)")
    sweep_dir = os.path.join(base_cfg.train.results_base_folder, name)
    if not args.dry_run:
        os.makedirs(sweep_dir, exist_ok=True)
        record = {"grid": grid, "seeds": seeds, "train_args": train_args, "points": [p.name for p in points]}
        with open(os.path.join(sweep_dir, SWEEP_FILE), "w") as fh:
            json.dump(record, fh, indent=2)
    print(f"sweep {name}: {len(points)} runs ({len(points) // len(seeds)} grid points x {len(seeds)} seeds) in "
          f"{sweep_dir}", flush=True)
    results = run_sweep_points(points, train_values, config_file, sweep_dir, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    failed = [n for n, (o, _d) in results.items() if o == "failed"]
    dirs = [d for _o, d in results.values() if d]
    if dirs:
        from .compare import compare

        print()
        print(compare(dirs).text())
        print(f"plots and report: lmsprint compare {sweep_dir}")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; rerun the same command to retry/resume them",
              file=sys.stderr)
        return 1
    return 0
