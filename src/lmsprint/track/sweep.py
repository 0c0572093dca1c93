"""`lmsprint sweep`: a grid of flag values x seeds, one `python -m lmsprint train` subprocess per run, resumable.

    lmsprint sweep --grid label_smoothing=0,0.1 --grid lr=1e-3,3e-3 --seeds 0,1,2 [--name NAME] -- <train flags>

- `--grid FLAG=V1,V2,...` (repeatable): a train flag and its values; the sweep is the cross product of all grids
  and `--seeds`. Grid keys are checked against the config's flags (unknown -> one-line error naming the closest
  flag) and every point's full config is validated (`validate_points`) before anything runs.
- Runs live in `<results_base_folder>/<sweep name>/` (default name `sweep-<grid keys>`; `check_name`, also the
  ladder's: one plain folder name, never empty, `.` or `..`), each with a
  deterministic `--exp_name` made of the grid point and the seed, e.g. `label_smoothing=0.1_seed=2`.
- Resumable: run the same command again and finished runs (summary status "complete") are skipped, an
  interrupted run with a checkpoint is continued with `lmsprint train --resume <its dir>` (with only the
  resume-safe flags), and only runs never started (or stopped before their first checkpoint) start over.
- Each training is `sys.executable -m lmsprint train ...` in its own process, so one failure (or a crash) does
  not stop the sweep; a Ctrl-C stops the sweep (rerun to resume).
- Seed-major order (`plan`): every arm's seed 0, then every arm's seed 1, ...: no arm runs all its seeds before
  another arm starts, so a machine whose load drifts does not favour one arm.
- `--parallel N` (`batches`): runs start in batches, all runs of a batch together, the next batch when the whole
  batch has ended. With N >= the number of arms a batch is N // arms whole seeds (every arm of a seed starts with
  the others: they share the machine's load); with fewer, N runs in seed-major order (a warning says the arms of
  a seed cannot all start together). Each run's output goes to `<sweep folder>/<run>.log`, and the data is
  prepared once beforehand (`prepare_data`) so that concurrent runs never prepare it side by side.
- Every batch started is recorded in sweep.json (`launches`: time and run names). `started_together(a, b)`: two
  runs of one sweep folder were started together when every launch (start or resume) of one was a launch of the
  other, in the same batch; `compare` pairs such runs of the same seed (the paired t-test).
The command line (argument parsing, the final comparison, the exit status) is in cli/sweep.py.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .. import rundir
from ..config import FLAGS, RESUME_SAFE, build_config, coerce, flags_where, flatten, unknown_option_error
from ..config.schema import ALIASES
from ..data.prepare import prepare
from ..errors import UserError
from ..files import atomic_write_text, json_text
from ..training.checks import check_run

# flags the sweep sets itself for every run -> why (config metadata `sweep_reserved="reason"`)
RESERVED = {**{k: FLAGS[k][1].metadata["sweep_reserved"] for k in flags_where("sweep_reserved")},
            "resume": "rerun the same sweep command to resume it"}  # a train flag, no option
# flags that may accompany --resume (metadata `resume_safe=True`), less the one the sweep sets itself
SWEEP_RESUME_SAFE = RESUME_SAFE - {"results_base_folder"}
SWEEP_FILE = "sweep.json"       # in the sweep folder (not a run directory): the grid, seeds and train flags


@dataclass
class Point:
    values: dict          # flag -> raw string value of this grid point
    seed: int
    labels: dict = field(default_factory=dict)  # flag -> this value's piece of the name, where `_safe` collides

    @property
    def name(self) -> str:
        parts = [f"{k}={self.labels.get(k) or _safe(v)}" for k, v in self.values.items()] + [f"seed={self.seed}"]
        return "_".join(parts)


def _safe(v: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+\-]", "-", str(v))


def value_labels(values: list[str]) -> dict[str, str]:
    """value -> its piece of the run name: `_safe(value)`, plus a short hash of the value itself when two values
    of the grid make the same `_safe` form (`a_b.txt` and `a-b.txt`), so every grid point gets its own run."""
    by_safe: dict[str, list[str]] = {}
    for v in values:
        by_safe.setdefault(_safe(v), []).append(v)
    return {v: s + (f"-{hashlib.sha1(str(v).encode()).hexdigest()[:6]}" if len(vs) > 1 else "")
            for s, vs in by_safe.items() for v in vs}


# ---------------------------------------------------------------------------------------------------- parsing


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """['label_smoothing=0,0.1', 'lr=1e-3'] -> {'label_smoothing': ['0', '0.1'], 'lr': ['1e-3']} (validated)."""
    grid: dict[str, list[str]] = {}
    for spec in specs or []:
        if "=" not in spec:
            raise UserError(f"--grid '{spec}' is not FLAG=V1,V2,...; e.g. --grid label_smoothing=0,0.1")
        key, _, vals = spec.partition("=")
        key = key.strip().lstrip("-")
        key = ALIASES.get(key, key)  # nanoGPT's names (learning_rate, max_iters, ...)
        if key in RESERVED:
            raise UserError(f"--grid {key}: {RESERVED[key]}")
        if key not in FLAGS:
            raise unknown_option_error(key, "grid key")
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


def check_train_values(values: dict) -> None:
    """UserError if the pass-through train flags set a flag the sweep sets itself."""
    for k in RESERVED:
        if values.get(k) is not None:
            raise UserError(f"--{k} cannot be passed to a sweep's runs: {RESERVED[k]}")


def check_name(name: str) -> str:
    """`name` if it is one plain folder name for a sweep's or a ladder's folder under --results_base_folder, else
    UserError: not empty, `.`, `..` or the results folder's `latest` pointer, no path separator; so the folder
    never escapes or clobbers the results folder."""
    if not re.fullmatch(r"[\w.+=-]+", name) or name in (".", "..", rundir.LATEST_POINTER):
        raise UserError(f"--name '{name}' must be a plain folder name (letters, digits, . _ - + =), not "
                        f"'.', '..' or '{rundir.LATEST_POINTER}'")
    return name


# ---------------------------------------------------------------------------------------------------- planning


def plan(grid: dict[str, list[str]], seeds: list[int]) -> list[Point]:
    """Every grid point x seed, seed-major: all arms of the first seed, then all arms of the next one, ..."""
    keys = list(grid)
    labels = {k: value_labels(grid[k]) for k in keys}
    return [Point(dict(zip(keys, combo)), seed, {k: labels[k][v] for k, v in zip(keys, combo)})
            for seed in seeds for combo in itertools.product(*(grid[k] for k in keys))]


def batches(points: list[Point], parallel: int) -> list[list[Point]]:
    """The points in start-together batches (see the module doc); `parallel` 1: one run per batch."""
    arms = len({tuple(p.values.items()) for p in points}) or 1
    size = max(1, parallel) if parallel < arms else parallel // arms * arms
    return [points[i:i + size] for i in range(0, len(points), size)]


def default_name(grid: dict) -> str:
    return "sweep-" + ("-".join(grid) if grid else "seeds")


def validate_points(points: list[Point], train_values: dict, config_file: Optional[str]):
    """Build and check every point's full run config now (`train.checks.check_run`: the config's own rules and
    what the model and optimizer support), not halfway through the sweep; returns the config of the train flags
    alone (its results_base_folder holds the sweep folder)."""
    for pt in points:
        values = {k: v for k, v in train_values.items() if k not in pt.values}
        check_run(build_config({**values, **pt.values, "seed": pt.seed}, config_file))
    return build_config(dict(train_values), config_file)


def prepare_data(points: list[Point], train_values: dict, config_file: Optional[str]) -> None:
    """Prepare (or find in the cache) every distinct dataset of the points, once, before runs start together."""
    seen = set()
    for pt in points:
        values = {k: v for k, v in train_values.items() if k not in pt.values}
        data = build_config({**values, **pt.values, "seed": pt.seed}, config_file).data
        key = json_text(vars(data))
        if key not in seen:
            seen.add(key)
            prepare(data, progress=False)


def read_record(sweep_dir: str) -> dict:
    """sweep.json of a sweep folder ({} if there is none or it is not a JSON object)."""
    try:
        with open(os.path.join(sweep_dir, SWEEP_FILE)) as fh:
            d = json.load(fh)
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def write_record(sweep_dir: str, record: dict) -> None:
    """sweep.json: `record` plus the launches recorded by earlier runs of the same sweep command."""
    os.makedirs(sweep_dir, exist_ok=True)
    launches = read_record(sweep_dir).get("launches")
    record = {**record, "launches": launches if isinstance(launches, list) else []}
    atomic_write_text(os.path.join(sweep_dir, SWEEP_FILE), json_text(record, indent=2))


def record_launch(sweep_dir: str, names: list[str]) -> None:
    """Append one batch started together (its time and run names) to sweep.json's `launches`."""
    record = read_record(sweep_dir)
    launches = record.get("launches") if isinstance(record.get("launches"), list) else []
    record["launches"] = launches + [{"started": rundir.now_iso(), "runs": list(names)}]
    atomic_write_text(os.path.join(sweep_dir, SWEEP_FILE), json_text(record, indent=2))


def launch_ids(run_path: str, _cache: Optional[dict] = None) -> frozenset:
    """Indexes of the launches in its sweep folder's sweep.json that started (or resumed) run `run_path` (by its
    `exp_name`); empty for a run outside a sweep folder."""
    folder = os.path.dirname(os.path.normpath(run_path))
    cache = {} if _cache is None else _cache
    if folder not in cache:
        cache[folder] = read_record(folder).get("launches") or []
    name = flatten(rundir.read_config_dict(run_path)).get("exp_name")
    return frozenset(i for i, b in enumerate(cache[folder])
                     if isinstance(b, dict) and isinstance(b.get("runs"), list) and name in b["runs"])


def started_together_fn() -> Callable:
    """`started_together(a, b)` for two loaded runs (discover.Run): both in one sweep folder, and every launch of one
    was a launch of the other (module doc). sweep.json files are read once per folder."""
    cache: dict = {}
    ids: dict = {}

    def launches(run) -> frozenset:
        if run.path not in ids:
            ids[run.path] = launch_ids(run.path, cache)
        return ids[run.path]

    def started_together(a, b) -> bool:
        same_folder = os.path.dirname(os.path.normpath(a.path)) == os.path.dirname(os.path.normpath(b.path))
        return same_folder and bool(launches(a)) and launches(a) == launches(b)
    return started_together


def existing_runs(sweep_dir: str) -> dict[str, list[str]]:
    """exp_name -> run directories in the sweep folder that were started for it (oldest first)."""
    out: dict[str, list[str]] = {}
    for path in rundir.list_run_dirs(sweep_dir):
        name = flatten(rundir.read_config_dict(path)).get("exp_name")
        if name:
            out.setdefault(name, []).append(path)
    for name in out:
        out[name].sort(key=lambda p: os.path.getmtime(rundir.config_path(p)))
    return out


def decide(point: Point, runs: dict[str, list[str]]) -> tuple[str, Optional[str]]:
    """('skip', dir) for a complete run, ('resume', dir) for an interrupted one with a checkpoint, else ('new', None)."""
    dirs = runs.get(point.name, [])
    for d in dirs:
        if rundir.status(d) == "complete":
            return "skip", d
    for d in reversed(dirs):
        if rundir.has_checkpoint(d):
            return "resume", d
    return "new", None


# ---------------------------------------------------------------------------------------------------- running


def train_argv(values: dict, config_file: Optional[str] = None, resume_dir: Optional[str] = None) -> list[str]:
    """The command of one training process of a sweep or a ladder: `python -m lmsprint train` with `values` as
    flags; a new run (from `config_file` if given), or with `resume_dir` the resume of that run (`values` then only
    flags that may accompany --resume)."""
    cmd = [sys.executable, "-m", "lmsprint", "train"]
    if resume_dir:
        cmd += ["--resume", resume_dir]
    elif config_file:
        cmd += ["--config", config_file]
    for k, v in values.items():
        cmd += [f"--{k}", str(v)]
    return cmd


def train_command(point: Point, train_values: dict, config_file: Optional[str], sweep_dir: str,
                  resume_dir: Optional[str]) -> list[str]:
    if resume_dir:
        return train_argv({k: v for k, v in train_values.items() if k in SWEEP_RESUME_SAFE}, resume_dir=resume_dir)
    values = {k: v for k, v in train_values.items() if k not in point.values and k != "results_base_folder"}
    values.update(point.values)
    values.update({"seed": point.seed, "exp_name": point.name, "results_base_folder": sweep_dir})
    return train_argv(values, config_file)


def run_sweep_points(points: list[Point], train_values: dict, config_file: Optional[str], sweep_dir: str,
                     dry_run: bool = False, parallel: int = 1) -> dict[str, tuple[str, Optional[str]]]:
    """Run every point, in start-together batches (`batches`); returns name -> (outcome, run dir). Outcomes:
    skipped, complete, failed, planned."""
    results: dict[str, tuple[str, Optional[str]]] = {}
    plan_ = []  # per batch: [(tag, point, resume_dir, cmd)]
    i = 0
    for batch in batches(points, parallel):
        todo = []
        for point in batch:
            i += 1
            action, run_dir = decide(point, existing_runs(sweep_dir))
            tag = f"[sweep {i}/{len(points)}] {point.name}"
            if action == "skip":
                print(f"{tag}: complete in {run_dir}, skipped", flush=True)
                results[point.name] = ("skipped", run_dir)
                continue
            resume_dir = run_dir if action == "resume" else None
            cmd = train_command(point, train_values, config_file, sweep_dir, resume_dir)
            if dry_run:
                announce(tag, resume_dir, cmd)
                results[point.name] = ("planned", run_dir)
                continue
            todo.append((tag, point, resume_dir, cmd))
        if todo:
            plan_.append(todo)
    for todo in plan_:
        results.update(_run_batch(todo, sweep_dir, parallel > 1))
    return results


def _run_batch(todo: list, sweep_dir: str, to_logs: bool) -> dict[str, tuple[str, Optional[str]]]:
    """Start every run of one batch together, wait for all of them; output to <run>.log files when `to_logs`."""
    results: dict[str, tuple[str, Optional[str]]] = {}
    record_launch(sweep_dir, [point.name for _tag, point, _d, _cmd in todo])
    running: list[Launched] = []
    try:
        for tag, point, resume_dir, cmd in todo:
            running.append(launch(tag, point.name, resume_dir, cmd, sweep_dir, to_logs))
        while running:
            done = finished(running, sweep_dir)
            if not done:
                time.sleep(0.2)
            for run, outcome, run_dir in done:
                results[run.name] = (outcome, run_dir)
    except KeyboardInterrupt:
        stop_all(running, "rerun the same sweep command to resume")
        raise
    return results


# ---------------------------------------------------------------------------------------------------- processes
# one `lmsprint train` process of a sweep or a ladder: started, waited for, told its outcome, stopped on Ctrl-C


@dataclass
class Launched:
    tag: str                      # how the run is named in the console
    name: str                     # its exp_name in the folder
    resume_dir: Optional[str]
    proc: subprocess.Popen
    t0: float
    log: Optional[Any]            # its output file (runs in parallel), or None (the console)


def launch(tag: str, name: str, resume_dir: Optional[str], cmd: list[str], folder: str, to_log: bool,
           verb: str = "resuming") -> Launched:
    """Start one training process (its command echoed; with `to_log` its output in <folder>/<name>.log)."""
    announce(tag, resume_dir, cmd, verb)
    log = open(os.path.join(folder, name + ".log"), "a") if to_log else None
    if log is not None:
        print(f"  output: {log.name}", flush=True)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log else None)
    return Launched(tag, name, resume_dir, proc, time.time(), log)


def finished(running: list[Launched], folder: str) -> list[tuple[Launched, str, Optional[str]]]:
    """The processes of `running` that have ended, removed from it: (launched, 'complete' | 'failed', run dir),
    each with its console line."""
    out = []
    for run in [r for r in running if r.proc.poll() is not None]:
        rc = run.proc.wait()
        running.remove(run)
        if run.log is not None:
            run.log.close()
        after = existing_runs(folder).get(run.name, [])
        run_dir = run.resume_dir or (after[-1] if after else None)
        ok = rc == 0 and run_dir is not None and rundir.status(run_dir) == "complete"
        print(f"{run.tag}: {'complete' if ok else f'FAILED (exit {rc})'} after {time.time() - run.t0:.0f}s",
              flush=True)
        out.append((run, "complete" if ok else "failed", run_dir))
    return out


def stop_all(running: list[Launched], then: str) -> None:
    """Ctrl-C reaches the children too: let them write their checkpoints and summaries, then stop."""
    for run in running:
        try:
            run.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            run.proc.kill()
            run.proc.wait()
        if run.log is not None:
            run.log.close()
        print(f"{run.tag}: interrupted; {then}", file=sys.stderr, flush=True)


def announce(tag: str, resume_dir: Optional[str], cmd: list[str], verb: str = "resuming") -> None:
    print(f"{tag}: {verb + ' ' + resume_dir if resume_dir else 'starting'}", flush=True)
    print("  $ " + " ".join(_quote(c) for c in cmd[2:]), flush=True)


def _quote(s: str) -> str:
    return s if re.fullmatch(r"[\w@%+=:,./-]+", s) else "'" + s.replace("'", "'\\''") + "'"
