"""`lmsprint ladder`: the rungs of one arm (fractions of a target budget x seeds) trained into one folder that
`lmsprint forecast` reads, resumable; with the wsd schedule, the rungs branch from one stable-phase run.

    lmsprint ladder --at 3200 --rungs 1/16,1/8,1/4,1/2 --seeds 2 [--parallel 2] [--name N] -- <train flags>

- Plan (`plan_ladder`): rung budgets = fraction x target (iterations rounded to whole steps, or durations when
  the target is a duration), seeds 0..N-1 (or a list), one run per (rung, seed) named `it<N>_s<seed>` (or
  `tb<duration>_s<seed>`) in `<results_base_folder>/<name>/`, with `ladder.json` recording the plan; a folder
  made for another plan is refused, never mixed.
- Branching (`--scheduler wsd`, an iteration target, not `--no_branch`): per seed, the longest rung runs in full
  and keeps a checkpoint (`--save_checkpoint_steps`) at each shorter rung's branch step; each shorter rung is a
  fork of that checkpoint (`fork_run`: a new run directory with the rung's config, the metrics and samples up to
  the branch step, the checkpoint as its latest.pt) continued by the ordinary `lmsprint train --resume`, which
  runs its cool-down. The warmup is counted in steps (`--warmup_steps`, default warmup_percent x the shortest
  rung) so every rung's learning rate is, bit for bit, the longest rung's up to the branch step; `branch_steps`
  finds that step by comparing the multipliers themselves (the last step before they first differ), and a rung
  continued from there takes exactly the steps an independent run of its length would. Cost per seed: the
  longest rung + each shorter rung's cool-down, instead of the sum of the rungs.
- Resumable: rerun the same command; a complete run is skipped, an interrupted one continues from its checkpoint
  (`lmsprint train --resume`), a fork not made yet is made when its branch checkpoint exists, and only runs that
  never started (or died before a checkpoint) start over. Nothing that finished is rerun.
- Each training is `python -m lmsprint train` in its own process (`--parallel N` at a time, output in
  `<folder>/<run>.log`), as `lmsprint sweep` runs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional

from .. import rundir
from ..config import RESUME_SAFE, RunConfig, build_config, set_value
from ..config.options import parse_fractions, parse_seed_list as _parse_seed_list
from ..data.prepare import prepare
from ..errors import UserError
from ..files import atomic_copy, atomic_write_text, json_text
from ..optim.schedules import lr_multiplier, muon_momentum
from ..training.checks import check_run
from .forecast import fmt_budget, parse_target
from .sweep import announce, check_name, existing_runs, finished, launch, stop_all, train_argv

LADDER_FILE = "ladder.json"
# flags the ladder sets for every run -> why
RESERVED = {"seed": "use --seeds N (seeds 0..N-1) or --seeds 0,3,7",
            "iterations": "the ladder sets each rung's budget from --at and --rungs",
            "time_budget": "the ladder sets each rung's budget from --at and --rungs",
            "exp_name": "the ladder names each run", "run_prefix": "the ladder names each run",
            "save_checkpoint_steps": "the ladder keeps the branch checkpoints itself",
            "resume": "rerun the same ladder command to resume it"}
# the flags a rung's resume may pass again (the results folder and the kept steps are the ladder's own)
LADDER_RESUME_SAFE = RESUME_SAFE - {"results_base_folder", "save_checkpoint_steps"}


# ---------------------------------------------------------------------------------------------------- parsing


def parse_rungs(text: str) -> list[Fraction]:
    """'1/16,1/8,0.25' -> [1/16, 1/8, 1/4] (sorted, distinct, each in (0, 1]; `config.options.parse_fractions`)."""
    try:
        return parse_fractions(text)
    except ValueError as e:
        raise UserError(f"--rungs {e}") from None


def parse_seed_list(text: str) -> list[int]:
    """'2' -> [0, 1] (a count); '0,3,7' -> [0, 3, 7] (a list; `config.options.parse_seed_list`)."""
    try:
        return _parse_seed_list(text)
    except ValueError as e:
        raise UserError(f"--seeds '{text}' {e}") from None


def check_train_values(values: dict) -> None:
    for k, why in RESERVED.items():
        if values.get(k) is not None:
            raise UserError(f"--{k} cannot be passed to a ladder's runs: {why}")


# ---------------------------------------------------------------------------------------------------- the plan


@dataclass
class Rung:
    fraction: Fraction
    budget: float                      # iterations, or seconds
    name_part: str                     # it200 | tb5m


@dataclass
class Task:
    name: str                          # exp_name of the run: <rung>_s<seed>
    rung: Rung
    seed: int
    values: dict                       # the run's own flag values (over the train flags)
    source: Optional[str] = None       # branched: exp_name of the run it forks from
    branch_step: Optional[int] = None  # branched: the step of the source's checkpoint it forks from


@dataclass
class Plan:
    name: str
    folder: str
    kind: str                          # iterations | time
    target: float
    rungs: list
    seeds: list
    branched: bool
    warmup_steps: Optional[int]
    train_values: dict = field(default_factory=dict)   # the train flags as typed (what the runs share)
    tasks: list = field(default_factory=list)

    def record(self, train_args: list[str]) -> dict:
        return {"target": fmt_budget(self.kind, self.target).replace(",", ""), "kind": self.kind,
                "rungs": [str(r.fraction) for r in self.rungs], "seeds": self.seeds, "branched": self.branched,
                "warmup_steps": self.warmup_steps, "train_args": train_args,
                "train_values": {k: str(v) for k, v in sorted(self.train_values.items())},
                "runs": [{"name": t.name, "budget": t.rung.budget, "seed": t.seed, "source": t.source,
                          "branch_step": t.branch_step} for t in self.tasks]}

    def cost(self) -> tuple[float, float]:
        """(steps or seconds this plan trains per seed, the same for independent rungs)."""
        full = sum(r.budget for r in self.rungs)
        if not self.branched:
            return full, full
        longest = self.rungs[-1].budget
        return longest + sum(r.budget - t.branch_step for r in self.rungs[:-1]
                             for t in self.tasks if t.rung is r and t.seed == self.seeds[0]), full


def _rung_name(kind: str, budget: float) -> str:
    if kind == "iterations":
        return f"it{int(budget)}"
    return "tb" + fmt_budget(kind, budget)


def multipliers_equal(cfg_a: RunConfig, cfg_b: RunConfig, step: int) -> bool:
    """Whether two step-budgeted runs use bit-identical lr multipliers (and Muon momentum) at `step`."""
    na, nb = cfg_a.train.iterations, cfg_b.train.iterations
    pa, pb = min(step / na, 1.0), min(step / nb, 1.0)
    if lr_multiplier(pa, cfg_a.optim, na) != lr_multiplier(pb, cfg_b.optim, nb):
        return False
    if cfg_a.optim.opt == "muon" and muon_momentum(pa, cfg_a.optim) != muon_momentum(pb, cfg_b.optim):
        return False
    return True


def branch_step(short: RunConfig, long: RunConfig) -> int:
    """The latest step c such that the short run's first c optimizer steps use the same multipliers as the long
    run's: a checkpoint of the long run at step c continues as the short run exactly (the step's lr is set from
    the step count before it, so steps 0..c-1 must agree)."""
    n = short.train.iterations
    for s in range(n + 1):
        if not multipliers_equal(short, long, s):
            return s
    return n


def plan_ladder(target_text: str, rungs_text: str, seeds_text: str, train_values: dict, config_file: Optional[str],
                name: Optional[str], no_branch: bool = False) -> Plan:
    """The runs of the ladder, every one's config validated now (not halfway through)."""
    check_train_values(train_values)
    kind, target = parse_target(target_text)
    fractions = parse_rungs(rungs_text)
    seeds = parse_seed_list(seeds_text)
    base = build_config(dict(train_values), config_file)
    rungs = []
    for f in fractions:
        b = float(f) * target
        if kind == "iterations":
            b = float(max(1, round(b)))
        if rungs and b == rungs[-1].budget:
            raise UserError(f"--rungs {rungs[-1].fraction} and {f} of {fmt_budget(kind, target)} are the same "
                            f"{'number of iterations' if kind == 'iterations' else 'duration'}; use a larger "
                            "target or fewer rungs")
        rungs.append(Rung(f, b, _rung_name(kind, b)))
    branched = base.optim.scheduler == "wsd" and kind == "iterations" and not no_branch and len(rungs) > 1
    warmup = None
    if kind == "time":
        print("note: time-budgeted rungs measure this machine's speed under its load of the moment as much as the "
              "idea; iterations are the honest unit (--at N, converted from your hours with the steps/s you "
              "measure)" + ("; and a wsd ladder on time is not branched (no checkpoint repeats a schedule run on "
                             "elapsed time)" if base.optim.scheduler == "wsd" and not no_branch else ""),
              file=sys.stderr)
    if branched:
        if base.optim.opt == "muon" and base.optim.muon_momentum_warmup > 0:
            raise UserError(f"--muon_momentum_warmup {base.optim.muon_momentum_warmup} is a fraction of each run, "
                            "so a branched rung's momentum would differ from its stable run's; drop it, or train "
                            "each rung on its own with --no_branch")
        warmup = base.optim.warmup_steps or (max(1, round(base.optim.warmup_percent * rungs[0].budget))
                                             if base.optim.warmup_percent > 0 else 0)
    elif base.optim.warmup_steps:
        warmup = base.optim.warmup_steps
    name = check_name(default_name(base, kind, target) if name is None else name)
    folder = os.path.join(base.train.results_base_folder, name)
    plan = Plan(name, folder, kind, target, rungs, seeds, branched, warmup, dict(train_values))
    for seed in seeds:
        for r in rungs:
            values = {"seed": seed, "exp_name": f"{r.name_part}_s{seed}"}
            if kind == "iterations":
                values["iterations"] = int(r.budget)
            else:
                values["time_budget"] = fmt_budget(kind, r.budget)
            if warmup is not None and (branched or base.optim.warmup_steps):
                values["warmup_steps"] = warmup
            plan.tasks.append(Task(values["exp_name"], r, seed, values))
    configs = {}
    for t in plan.tasks:
        cfg = build_config({**train_values, **t.values}, config_file)
        try:
            check_run(cfg)
        except UserError as e:
            raise UserError(f"rung {t.rung.fraction} ({fmt_budget(kind, t.rung.budget)}): {e}")
        configs[t.name] = cfg
    if branched:
        for seed in seeds:
            longest = next(t for t in plan.tasks if t.seed == seed and t.rung is rungs[-1])
            steps = []
            for t in plan.tasks:
                if t.seed != seed or t is longest:
                    continue
                c = branch_step(configs[t.name], configs[longest.name])
                if c < 1:
                    raise UserError(f"rung {t.rung.fraction} cannot branch from the longest rung: their learning "
                                    "rates differ from the first step; use --no_branch")
                t.source, t.branch_step = longest.name, c
                steps.append(c)
            longest.values["save_checkpoint_steps"] = ",".join(str(c) for c in sorted(set(steps)))
    return plan


def default_name(cfg: RunConfig, kind: str, target: float) -> str:
    """ladder-<the run name less its seed>-at<target>, e.g. ladder-llama2_l2_d64_muon-at3200."""
    stem = re.sub(r"_s\d+$", "", rundir.run_name(cfg))
    return f"ladder-{stem}-at{fmt_budget(kind, target).replace(',', '')}"


def check_folder(plan: Plan, train_args: list[str]) -> None:
    """Refuse a ladder folder that holds another plan (another target, rungs, seeds or train flags)."""
    path = os.path.join(plan.folder, LADDER_FILE)
    if not os.path.isfile(path):
        return
    try:
        with open(path) as fh:
            old = json.load(fh)
    except (OSError, ValueError):
        return
    new = json.loads(json_text(plan.record(train_args)))
    diff = [k for k in ("target", "kind", "rungs", "seeds", "branched", "warmup_steps", "train_values")
            if k in old and old.get(k) != new.get(k)]  # a key an older record lacks is not compared
    if diff:
        raise UserError(f"ladder folder {plan.folder} was made for another plan ({', '.join(diff)} differ); rerun "
                        "its own command to resume it, or give this ladder another --name")


def write_record(plan: Plan, train_args: list[str]) -> None:
    os.makedirs(plan.folder, exist_ok=True)
    atomic_write_text(os.path.join(plan.folder, LADDER_FILE), json_text(plan.record(train_args), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------- forks


def branch_checkpoint(source_dir: str, step: int) -> str:
    return rundir.checkpoint_path(source_dir, f"step_{step}.pt")


def fork_run(source_dir: str, step: int, folder: str, exp_name: str, values: dict) -> str:
    """A new run directory `<folder>/<exp_name>` continuing `source_dir` from its checkpoint at `step`: the
    source's config with `values` applied (the rung's iterations, name), its metrics.jsonl and samples.txt (the
    resume cuts them back to the checkpoint), the step checkpoint as latest.pt. Made in a hidden folder and renamed
    into place, so a fork is either whole or absent. The fork then continues with `lmsprint train --resume DIR
    --resume_override iterations,exp_name`."""
    ckpt = branch_checkpoint(source_dir, step)
    if not os.path.isfile(ckpt):
        raise UserError(f"cannot branch from {source_dir}: its checkpoint at step {step} ({ckpt}) is missing; "
                        f"rerun its ladder command (the stable run keeps it with --save_checkpoint_steps {step})")
    cfg = rundir.read_config(source_dir)
    for k, v in values.items():
        set_value(cfg, k, v)
    cfg.validate()
    tmp = os.path.join(folder, f".{exp_name}.fork")
    shutil.rmtree(tmp, ignore_errors=True)  # a fork left half-made by a kill
    os.makedirs(os.path.join(tmp, rundir.CKPT_DIR))
    atomic_copy(ckpt, rundir.checkpoint_path(tmp))
    for src, dst in ((rundir.metrics_path(source_dir), rundir.metrics_path(tmp)),
                     (rundir.samples_path(source_dir), rundir.samples_path(tmp))):
        if os.path.exists(src):
            atomic_copy(src, dst)
    rundir.write_config(tmp, cfg)
    for i in range(1, 1000):
        dst = os.path.join(folder, exp_name if i == 1 else f"{exp_name}-{i}")
        if not os.path.exists(dst):
            os.rename(tmp, dst)
            return dst
    raise UserError(f"too many folders named {exp_name} in {folder}")


# ---------------------------------------------------------------------------------------------------- running


def train_command(task: Task, train_values: dict, config_file: Optional[str], plan: Plan,
                  resume_dir: Optional[str], override: bool = False) -> list[str]:
    if resume_dir:
        cmd = train_argv({k: v for k, v in train_values.items() if k in LADDER_RESUME_SAFE}, resume_dir=resume_dir)
        if override:  # a fork: its branch checkpoint holds the stable run's iterations and name
            cmd += ["--resume_override", "iterations,exp_name"]
        return cmd
    values = {k: v for k, v in train_values.items() if k not in task.values and k != "results_base_folder"}
    values.update(task.values)
    values["results_base_folder"] = plan.folder
    return train_argv(values, config_file)


def _state(task: Task, runs: dict) -> tuple[str, Optional[str]]:
    """('complete', dir) | ('running', dir) | ('resume', dir) | ('new', None) for a task's run."""
    dirs = runs.get(task.name, [])
    for d in dirs:
        if rundir.status(d) == "complete":
            return "complete", d
    for d in dirs:
        if rundir.status(d) == "running":
            return "running", d
    for d in reversed(dirs):
        if rundir.has_checkpoint(d):
            return "resume", d
    return "new", None


def run_ladder(plan: Plan, train_values: dict, config_file: Optional[str], train_args: list[str],
               parallel: int = 1, dry_run: bool = False) -> dict[str, tuple[str, Optional[str]]]:
    """Run (or resume) every task; returns name -> (outcome, run dir), outcomes: skipped | complete | failed |
    planned | blocked."""
    if not dry_run:
        check_folder(plan, train_args)
        write_record(plan, train_args)
        prepare(build_config(dict(train_values), config_file).data, progress=False)  # once, not per run
    results: dict[str, tuple[str, Optional[str]]] = {}
    n = len(plan.tasks)
    index = {t.name: i for i, t in enumerate(plan.tasks, 1)}
    todo = list(plan.tasks)
    running: list = []  # sweep.Launched: the training processes now running

    def tag(t: Task) -> str:
        return f"[ladder {index[t.name]}/{n}] {t.name}"

    try:
        while todo or running:
            free = todo and len(running) < max(parallel, 1)
            runs = existing_runs(plan.folder) if free and os.path.isdir(plan.folder) else {}
            started = False
            for t in list(todo):
                if len(running) >= max(parallel, 1):
                    break
                state, d = _state(t, runs)
                if state == "complete":
                    todo.remove(t)
                    print(f"{tag(t)}: complete in {d}, skipped", flush=True)
                    results[t.name] = ("skipped", d)
                    continue
                if state == "running":
                    todo.remove(t)
                    print(f"{tag(t)}: running in another process ({d}); rerun the ladder when it ends",
                          file=sys.stderr, flush=True)
                    results[t.name] = ("failed", d)
                    continue
                override = False
                if state == "new" and t.source is not None:
                    src_state, src_dir = _state(next(x for x in plan.tasks if x.name == t.source), runs)
                    ckpt = branch_checkpoint(src_dir, t.branch_step) if src_dir else None
                    if ckpt is None or not os.path.isfile(ckpt):
                        if src_state == "complete" and src_dir:
                            results[t.name] = ("failed", None)
                            todo.remove(t)
                            print(f"{tag(t)}: FAILED: its stable run {src_dir} is complete but has no checkpoint "
                                  f"at step {t.branch_step}; remove that run directory and rerun the ladder",
                                  file=sys.stderr, flush=True)
                        elif dry_run:
                            todo.remove(t)
                            results[t.name] = ("planned", None)
                            print(f"{tag(t)}: will branch from {t.source} at step {t.branch_step:,} and run its "
                                  f"cool-down to {int(t.rung.budget):,}", flush=True)
                        continue  # waits for its stable run to reach the branch step
                    if dry_run:
                        todo.remove(t)
                        results[t.name] = ("planned", None)
                        print(f"{tag(t)}: would branch from {src_dir} at step {t.branch_step:,}", flush=True)
                        continue
                    d = fork_run(src_dir, t.branch_step, plan.folder, t.name,
                                 {**{k: v for k, v in t.values.items() if k in ("iterations", "exp_name")},
                                  "save_checkpoint_steps": ""})  # the stable run's branch points are not its
                    print(f"{tag(t)}: branched from {src_dir} at step {t.branch_step:,}", flush=True)
                    state, override = "resume", True
                elif state == "resume":
                    override = t.source is not None  # until its first checkpoint it holds the stable run's config
                resume_dir = d if state == "resume" else None
                cmd = train_command(t, train_values, config_file, plan, resume_dir, override)
                todo.remove(t)
                if dry_run:
                    announce(tag(t), resume_dir, cmd, "continuing")
                    results[t.name] = ("planned", resume_dir)
                    continue
                os.makedirs(plan.folder, exist_ok=True)
                running.append(launch(tag(t), t.name, resume_dir, cmd, plan.folder, parallel > 1, "continuing"))
                started = True
            if dry_run:
                for t in todo:
                    results[t.name] = ("planned", None)
                break
            if not running:
                if todo:  # nothing runs and nothing can start: forks whose stable run failed
                    for t in todo:
                        results[t.name] = ("blocked", None)
                        print(f"{tag(t)}: not run: its stable run {t.source} did not reach step {t.branch_step:,}",
                              file=sys.stderr, flush=True)
                    todo.clear()
                break
            done = finished(running, plan.folder)
            if not done:
                time.sleep(0.2 if started else 0.5)
            for run, outcome, d in done:
                results[run.name] = (outcome, d)
    except KeyboardInterrupt:
        stop_all(running, "rerun the same ladder command to continue it")
        raise
    return results
