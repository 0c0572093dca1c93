"""lm-eval result files of a run (`<run_dir>/evals/lm_eval-<UTC time>[-N].json`) and their numbers, without
importing lm-eval or torch (so `compare` stays light).

- `write_results(run_dir, results)`: writes a new file; the text is fully written under a temporary name and then
  hard-linked to its final name, which fails instead of replacing an existing file, so an earlier result is never
  overwritten, even by a concurrent eval (suffix `-2`, `-3`, ... when the name is taken).
- `list_results(run_dir)`: the files, oldest first. `summary_metrics(results)`: flat {"<task>/<metric>": value}.
- `latest_metrics(run_dir)`: the metrics of all of a run's result files merged, newer files winning (compare's
  lm-eval columns). A result file that is not UTF-8 JSON of lm-eval's shape (`results`: {task: {metric: value}})
  is a `RunFileError` naming the file and the field (`read_results`); `latest_metrics` skips it and hands that
  line to its caller (compare prints it).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Mapping, Optional

from .. import rundir
from ..errors import RunFileError, UserError

RESULTS_PREFIX = "lm_eval-"


def summary_metrics(results: Mapping) -> dict[str, float]:
    """{"<task>/<metric>": value} for every numeric metric (filters such as ',none' dropped; stderr skipped)."""
    out = {}
    for task, metrics in (results.get("results") or {}).items():
        if not isinstance(metrics, Mapping):
            continue
        for key, value in metrics.items():
            metric = key.split(",")[0]
            if "stderr" in metric or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            out[f"{task}/{metric}"] = float(value)
    return out


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def write_results(run_dir: str, results: Mapping, extra: Optional[Mapping] = None,
                  stamp: Optional[str] = None) -> str:
    """Write results to a new file under `<run_dir>/evals/`; never replaces an existing file. Returns its path."""
    rundir.check_links(run_dir)  # never through a link planted in the run (evals/ itself included)
    d = rundir.lm_eval_dir(run_dir)
    os.makedirs(d, exist_ok=True)
    stamp = stamp or _stamp()
    payload = {"lmsprint": dict(extra or {}), **results}
    text = json.dumps(payload, indent=2, default=str) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".lm_eval.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        for n in range(1, 10_000):
            path = os.path.join(d, f"{RESULTS_PREFIX}{stamp}{'' if n == 1 else f'-{n}'}.json")
            try:
                os.link(tmp, path)  # atomic, and fails if `path` exists
                return path
            except FileExistsError:
                continue
        raise UserError(f"too many lm-eval result files named {RESULTS_PREFIX}{stamp}* in {d}")
    finally:
        os.remove(tmp)


def list_results(run_dir: str) -> list[str]:
    """Result files of a run, oldest first (by name: UTC time, then suffix)."""
    d = rundir.lm_eval_dir(run_dir)
    if not os.path.isdir(d):
        return []

    def key(name: str):
        stem = name[len(RESULTS_PREFIX):-len(".json")]
        parts = stem.split("-")
        n = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 1
        return ("-".join(parts[:2]), n)

    names = [n for n in os.listdir(d) if n.startswith(RESULTS_PREFIX) and n.endswith(".json")]
    return [os.path.join(d, n) for n in sorted(names, key=key)]


def latest_metrics(run_dir: str, problems: Optional[list] = None) -> dict[str, float]:
    """{"<task>/<metric>": value} over all result files of the run, a newer file's value replacing an older one
    (sample counts left out). A malformed file (`read_results`) is skipped; its one-line reason (naming the file
    and the field) is appended to `problems` when given."""
    out: dict[str, float] = {}
    for path in list_results(run_dir):
        try:
            results = read_results(run_dir, path)
        except (OSError, UserError) as e:
            if problems is not None:
                problems.append(f"skipped lm-eval results {path}: {e}")
            continue
        out.update({k: v for k, v in summary_metrics(results).items() if not k.endswith("/sample_len")})
    return out


def read_results(run_dir: str, path: str) -> dict:
    """One result file of the run, checked: a JSON object whose `results` maps task names to metric mappings."""
    try:
        results = json.loads(rundir.read_text(run_dir, path, limit=1 << 28))
    except ValueError as e:  # RunFileError (not UTF-8) is a ValueError too: passed on as it is
        if isinstance(e, RunFileError):
            raise
        raise RunFileError(path, "", f"is not valid JSON ({e})") from None
    if not isinstance(results, dict):
        raise RunFileError(path, "", f"holds {type(results).__name__}, not an lm-eval results object")
    tasks = results.get("results")
    if not isinstance(tasks, dict):
        raise RunFileError(path, "field 'results'", f"is {type(tasks).__name__}, not a mapping of tasks")
    for task, metrics in tasks.items():
        if not isinstance(metrics, dict):
            raise RunFileError(path, f"field 'results.{task}'", f"is {type(metrics).__name__}, not a mapping of "
                               "metrics")
    return results


__all__ = ["RESULTS_PREFIX", "write_results", "list_results", "read_results", "summary_metrics", "latest_metrics"]
