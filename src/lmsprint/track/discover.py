"""Finding and loading runs for `compare`: run directories named by paths, folders (searched recursively) or
glob patterns, each loaded into a `Run` (flat config, summary, metrics rows, final val metrics) through rundir.

A run whose summary status is not "complete" keeps its last logged val numbers as its `final` ones.
`load_run` reads every file through rundir's validating readers: a malformed config.yaml, summary.json or
metrics.jsonl is a `RunFileError` naming the file and the field (compare skips that run with the line); a malformed
lm-eval results file is skipped alone, its line kept in `Run.problems`.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Optional

from .. import keys as K
from .. import rundir
from ..config import flatten, typed
from ..errors import UserError
from ..evals.results import latest_metrics


@dataclass
class Run:
    path: str
    name: str
    status: str                       # complete | running | interrupted | failed | no summary (rundir.status)
    flat: dict                        # flat {flag: value} of config.yaml
    summary: dict
    rows: list                        # metrics.jsonl rows
    final: dict = field(default_factory=dict)   # one value (or None) per keys.VAL_METRICS key
    lm_eval: dict = field(default_factory=dict)  # {"<task>/<metric>": value} of `lmsprint eval --tasks` results
    problems: list = field(default_factory=list)  # one line per file of the run that was skipped as malformed

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def diverged(self) -> bool:
        """A complete run whose final val loss is above ln(vocab_size) (summary `diverged`; computed for summaries
        written before that key existed)."""
        if not self.complete:
            return False
        flag = self.summary.get(K.DIVERGED)
        if isinstance(flag, bool):
            return flag
        vocab = self.flat.get("vocab_size")
        return K.diverged(self.final.get(K.VAL_LOSS), vocab if isinstance(vocab, int) else None)

    def get(self, key: str):
        """A complete run's summary number; for an unfinished run (or a missing number) the last value logged."""
        v = self.summary.get(key) if self.complete else None
        if v is None:
            for r in reversed(self.rows):
                if r.get(key) is not None:
                    return r[key]
        return self.summary.get(key) if v is None else v

    @property
    def tokens_per_step(self) -> Optional[int]:
        try:
            return int(self.flat["batch_size"]) * int(self.flat["acc_steps"]) * int(self.flat["sequence_length"])
        except (KeyError, TypeError, ValueError):
            return None


def _walk_runs(folder: str) -> list[str]:
    found = []
    for root, dirs, _files in os.walk(folder):
        if rundir.is_run_dir(root):
            found.append(root)
            dirs[:] = []  # a run directory's subfolders (checkpoints, sinks) hold no runs
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return found


def find_runs(specs: list[str]) -> list[str]:
    """Run directories named by `specs` (run dirs, folders of runs, glob patterns), in order, without repeats."""
    out: list[str] = []
    for spec in specs:
        matches = [spec] if os.path.exists(spec) else sorted(glob.glob(spec))
        found, refused = [], None
        for m in matches:
            if rundir.is_run_dir(m):
                found.append(m)
            elif os.path.isdir(m):
                found.extend(_walk_runs(m))
            elif rundir.is_latest_pointer(m):  # `exps/*` includes the pointer
                try:
                    found.append(rundir.resolve_run_dir(rundir.LATEST_POINTER, os.path.dirname(m) or "."))
                except UserError as e:  # a pointer leading out of its folder: the runs beside it still count
                    refused = e
        if not found and refused is not None:
            raise refused
        if not found:
            raise UserError(f"no run directories found in '{spec}'; pass run directories (with "
                            f"{rundir.CONFIG_FILE}), a results folder or a glob pattern")
        for f in found:
            f = os.path.normpath(f)
            if f not in out:
                out.append(f)
    return out


def _number(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def load_run(path: str) -> Run:
    """One run's files (validated: RunFileError / UnsafePathError naming the file for a malformed one)."""
    summary = rundir.read_summary(path) or {}
    flat = typed(flatten(rundir.read_config_mapping(path)))
    run = Run(path=path, name=os.path.basename(os.path.normpath(path)), status=rundir.status(path),
              flat=flat, summary=summary, rows=rundir.read_metrics(path))
    final = summary.get(K.FINAL) if isinstance(summary.get(K.FINAL), dict) else {}
    for key in K.VAL_KEYS:
        v = final.get(key)
        if v is None and not run.complete:  # an unfinished run: its last logged val numbers
            v = run.get(key)
        run.final[key] = _number(v)
    run.lm_eval = latest_metrics(path, run.problems)
    return run


def lm_eval_columns(runs: list[Run]) -> list[str]:
    """The lm-eval metrics any of the runs has ("<task>/<metric>", sorted): compare's extra columns."""
    return sorted({k for r in runs for k in r.lm_eval})
