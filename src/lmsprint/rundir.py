"""Run directories: one new directory per run, never reused, plus the files that describe a run.

- `run_name(cfg)`: exp_name or a name derived from the model and the flags that matter
  (`<run_prefix><model>_l<n_layer>_d<n_embd>[_moe{E}k{K}][_ls{eps}]..._s<seed>`).
- `create_run_dir(cfg)`: atomic `os.mkdir` with a numeric suffix (-2, -3, ...) so that two identical commands,
  even concurrent ones, get two directories; records the `latest` pointer file (written atomically).
- `resolve_run_dir(spec, base)`: a run directory path or `latest` -> an existing run directory.
- `write_config` / `read_config`: config.yaml, the resolved nested `RunConfig.to_dict()`.
- `write_summary` / `read_summary`: summary.json (status running -> complete | failed), written atomically.
- `truncate_metrics(run_dir, n_rows)`: keep the first n_rows complete rows of metrics.jsonl (used by resume).
Nothing here overwrites or deletes another run's files.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import yaml

from .config import RunConfig
from .errors import UserError
from .files import atomic_write_text

LATEST_POINTER = "latest"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.txt"
CKPT_DIR = "checkpoints"


# ---------------------------------------------------------------------------------------------------- names


def _fmt(v) -> str:
    s = f"{v:g}" if isinstance(v, float) else str(v)
    return s.replace("/", "-").replace(" ", "")


def run_name(cfg: RunConfig) -> str:
    """exp_name if given, else a name derived from the model shape and the flags that differ from the defaults."""
    if cfg.train.exp_name:
        return cfg.train.run_prefix + cfg.train.exp_name
    m, moe, a, t, o = cfg.model, cfg.model.moe, cfg.model.attn, cfg.train, cfg.optim
    parts = [f"{m.model}_l{m.n_layer}_d{m.n_embd}"]
    if moe.moe_num_experts > 1:
        parts.append(f"moe{moe.moe_num_experts}k{moe.moe_num_experts_per_tok}")
    if t.label_smoothing > 0:
        parts.append(f"ls{_fmt(t.label_smoothing)}")
    if a.attention != "causal":
        parts.append(a.attention + (f"{a.attention_window}" if a.attention in ("local", "global_local") else ""))
    if o.opt != "adamw":
        parts.append(o.opt)
    if cfg.time_budget_s:
        parts.append(f"tb{_fmt(t.time_budget)}")
    parts.append(f"s{t.seed}")
    name = t.run_prefix + "_".join(parts)
    return "".join(c if c.isalnum() or c in "-_.+" else "-" for c in name)


def create_run_dir(cfg: RunConfig) -> str:
    """Create a brand-new run directory under results_base_folder; never returns an existing one."""
    base = cfg.train.results_base_folder
    try:
        os.makedirs(base, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --results_base_folder '{base}': {e.strerror}; choose a writable folder")
    name = run_name(cfg)
    for i in range(1, 100000):
        path = os.path.join(base, name if i == 1 else f"{name}-{i}")
        try:
            os.mkdir(path)  # atomic: exactly one process succeeds for a given path
        except FileExistsError:
            continue
        os.mkdir(os.path.join(path, CKPT_DIR))
        write_latest_pointer(base, path)
        return path
    raise UserError(f"too many runs named '{name}' in '{base}'; pass a different --exp_name")


def write_latest_pointer(base: str, run_dir: str) -> None:
    atomic_write_text(os.path.join(base, LATEST_POINTER), os.path.basename(os.path.normpath(run_dir)) + "\n")


def is_run_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def resolve_run_dir(spec: str, base: str = "./exps") -> str:
    """'latest' -> newest run in `base` (pointer file, else newest summary/metrics mtime); a path -> that run."""
    if spec != "latest":
        if not is_run_dir(spec):
            raise UserError(f"'{spec}' is not a run directory (no {CONFIG_FILE}); pass a folder created by "
                            "`lmsprint train` or 'latest'")
        return spec
    pointer = os.path.join(base, LATEST_POINTER)
    if os.path.isfile(pointer):
        with open(pointer) as fh:
            cand = os.path.join(base, fh.read().strip())
        if is_run_dir(cand):
            return cand
    runs = [os.path.join(base, d) for d in os.listdir(base)] if os.path.isdir(base) else []
    runs = [r for r in runs if is_run_dir(r)]
    if not runs:
        raise UserError(f"no runs found in '{base}'; train one first or pass --results_base_folder / a run directory")

    def mtime(r):
        ts = [os.path.getmtime(os.path.join(r, f)) for f in (SUMMARY_FILE, METRICS_FILE, CONFIG_FILE)
              if os.path.exists(os.path.join(r, f))]
        return max(ts)

    return max(runs, key=mtime)


# ---------------------------------------------------------------------------------------------------- files


def write_config(run_dir: str, cfg: RunConfig) -> None:
    atomic_write_text(os.path.join(run_dir, CONFIG_FILE), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_config(run_dir: str) -> RunConfig:
    path = os.path.join(run_dir, CONFIG_FILE)
    try:
        with open(path) as fh:
            d = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read {path}: {e}; is '{run_dir}' a run directory?")
    if not isinstance(d, dict):
        raise UserError(f"{path} is not a config mapping; is '{run_dir}' a run directory?")
    cfg = RunConfig.from_dict(d)
    cfg.config_format = d.get("config_format", cfg.config_format)
    return cfg.validate()


def write_summary(run_dir: str, summary: dict) -> None:
    atomic_write_text(os.path.join(run_dir, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")


def read_summary(run_dir: str) -> Optional[dict]:
    try:
        with open(os.path.join(run_dir, SUMMARY_FILE)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def count_metric_rows(run_dir: str) -> int:
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.exists(path):
        return 0
    with open(path) as fh:
        return sum(1 for line in fh if line.endswith("\n"))


def truncate_metrics(run_dir: str, n_rows: int) -> None:
    """Keep the first `n_rows` complete lines of metrics.jsonl (drops rows written after a checkpoint and any
    half-written last line), atomically."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.exists(path):
        return
    with open(path) as fh:
        lines = [line for line in fh]
    keep = [line for line in lines[:n_rows] if line.endswith("\n")]
    atomic_write_text(path, "".join(keep))


def truncate_file(path: str, n_bytes: int) -> None:
    if os.path.exists(path) and os.path.getsize(path) > n_bytes:
        with open(path, "r+b") as fh:
            fh.truncate(n_bytes)


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, METRICS_FILE)
    rows = []
    if os.path.exists(path):
        with open(path) as fh:
            for line in fh:
                if line.endswith("\n"):
                    rows.append(json.loads(line))
    return rows
