"""Metric sinks behind one interface: `Sinks.log(metrics, step)`, `log_text`, `finish(summary)`.

metrics.jsonl is always written (one JSON object per log call, keys from `lmsprint.keys`, always with
"iter"); Weights & Biases (`--wandb`) and TensorBoard (`--tensorboard`) are optional sinks behind the same calls.
Only rank 0 writes (`enabled=False` elsewhere makes every call a no-op).

- `check_available(cfg)`: call before creating the run directory; raises a one-line `UserError` naming the
  `pip install 'lmsprint[...]'` extra when an asked-for sink's package is missing.
- wandb: run name `<wandb_run_prefix><run dir name>`, `group` = the run's seed group (`wandb_group`), tags = preset,
  model, dataset and `sweep:<name>` (`wandb_tags`), files under `<run_dir>/wandb`, the resolved config, metrics
  against "iter" (the llm-baselines keys as they are), MoE expert load split into `moe/load/l{i}/e{j}` scalars plus
  a `moe/load_table` (layers x experts, logged with each sample), a growing `samples` table of generated text
  (one row per `log_text`), and the final metrics in `wandb.run.summary`. A resumed run directory continues the same wandb run (its id is kept in
  `<run_dir>/wandb/run_id`). Works online, offline (`WANDB_MODE=offline`, later `wandb sync <run_dir>/wandb/
  offline-run-*`) and disabled (`WANDB_MODE=disabled`).
- TensorBoard: `torch.utils.tensorboard.SummaryWriter` into `<run_dir>/tb`, scalars against "iter".
Every path inside the run directory comes from `lmsprint.rundir`.
"""

from __future__ import annotations

import importlib.util
import math
import os
import secrets
import string
from typing import Any, Optional

from .. import keys as K
from .. import rundir
from ..config import flatten, run_name_parts
from ..errors import RunFileError, UserError
from ..files import json_text, open_no_follow
from .stats import seed_group_id
from .sweep import SWEEP_FILE

SAMPLES_TABLE = "samples"


def _plain(v):
    """tensor/numpy/float -> JSON-able python value (a non-finite float as a string, as JSON cannot hold it)."""
    if hasattr(v, "detach"):
        v = v.detach().cpu()
    if hasattr(v, "tolist"):  # torch / numpy: 0-d -> python scalar, else nested lists
        v = v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def scalars(metrics: dict) -> dict[str, float]:
    """Flatten one log call into name -> number for scalar-only sinks (wandb charts, TensorBoard).

    Per-layer arrays become one scalar each: moe/load (layers, experts) -> moe/load/l{i}/e{j};
    moe/dropped_frac (layers,) -> moe/dropped_frac/l{i}; any other list is indexed the same way."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        v = _plain(v)
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = v
        elif isinstance(v, str):
            try:
                out[k] = float(v)  # 'nan' / 'inf' survive as floats here
            except ValueError:
                pass
        elif isinstance(v, (list, tuple)):
            for i, row in enumerate(v):
                if isinstance(row, (list, tuple)):
                    for j, x in enumerate(row):
                        if isinstance(x, (int, float)):
                            out[f"{k}/l{i}/e{j}"] = x
                elif isinstance(row, (int, float)):
                    out[f"{k}/l{i}"] = row
    return out


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def _wandb_mode() -> str:
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    return {"dryrun": "offline", "run": "online"}.get(mode, mode)


def _wandb_logged_in() -> bool:
    """True if online wandb has credentials (env, settings or .netrc), without prompting or network calls."""
    import wandb  # lazy: optional dependency (pip install 'lmsprint[wandb]')

    try:
        return bool(wandb.login(prompt=False, verify=False))
    except TypeError:  # an older wandb without `prompt`: let wandb.init decide
        return True
    except Exception:
        return False


def check_available(cfg) -> None:
    """Raise UserError now (before any run directory exists) if an asked-for sink cannot work."""
    if cfg.log.wandb and _missing("wandb"):
        raise UserError("--wandb needs the wandb package, which is not installed; pip install 'lmsprint[wandb]' "
                        "(or drop --wandb)")
    if cfg.log.wandb and _wandb_mode() in ("", "online") and not _wandb_logged_in():
        raise UserError("--wandb: no W&B API key is configured; run `wandb login` (or set WANDB_API_KEY), or set "
                        "WANDB_MODE=offline and `wandb sync` later, or drop --wandb")
    if cfg.log.tensorboard and _missing("tensorboard"):
        raise UserError("--tensorboard needs the tensorboard package, which is not installed; "
                        "pip install 'lmsprint[tensorboard]' (or drop --tensorboard)")


def flat_summary(summary: dict) -> dict[str, Any]:
    """summary.json -> flat wandb summary keys: scalars as they are, final metrics as final/<key>."""
    out: dict[str, Any] = {}
    for k, v in summary.items():
        if k == K.FINAL and isinstance(v, dict):
            for fk, fv in v.items():
                if fv is not None:
                    out[f"{K.FINAL}/{fk}"] = _plain(fv)
        elif isinstance(v, (int, float, str, bool)):
            out[k] = v
    return out


def wandb_group(cfg) -> str:
    """The wandb group of a run: its seed group (the derived run name without the seed, plus the id of the config
    without seeds and bookkeeping options), so runs differing only by seed are grouped (mean ± sd in wandb)."""
    parts = [p for p in run_name_parts(cfg) if p != f"s{cfg.train.seed}"]
    return "_".join(parts + [seed_group_id(flatten(cfg.to_dict()))])


def wandb_tags(cfg) -> list[str]:
    """Tags: the preset, the model, the dataset (its last path part) and `sweep:<name>` for a sweep's runs."""
    tags = [cfg.config_format, cfg.model.model, os.path.basename(os.path.normpath(str(cfg.data.dataset)))[:60]]
    base = cfg.train.results_base_folder
    if os.path.isfile(os.path.join(base, SWEEP_FILE)):
        tags.append("sweep:" + os.path.basename(os.path.normpath(base))[:58])
    return list(dict.fromkeys(t for t in tags if t))


class Sinks:
    """All metric outputs of one run. Construct on every rank; only the `enabled` one (rank 0) writes."""

    def __init__(self, cfg, run_dir: str, enabled: bool = True):
        self.cfg, self.run_dir, self.enabled = cfg, run_dir, enabled
        self._jsonl = None
        self._tb = None
        self._wandb = None
        self._wandb_mod = None
        self._sample_rows: list[list] = []
        self._last_load: Optional[list] = None
        if not enabled:
            return
        check_available(cfg)
        self._jsonl = open_no_follow(rundir.metrics_path(run_dir), "a")  # a link there is refused, never followed
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # lazy: needs the optional tensorboard package

            self._tb = SummaryWriter(log_dir=rundir.tb_dir(run_dir))
        if cfg.log.wandb:
            self._init_wandb()

    # ------------------------------------------------------------------ wandb
    def _init_wandb(self) -> None:
        import wandb  # lazy: optional dependency (pip install 'lmsprint[wandb]')

        cfg = self.cfg
        os.makedirs(rundir.wandb_dir(self.run_dir), exist_ok=True)
        id_file = rundir.wandb_id_path(self.run_dir)
        if os.path.exists(id_file):  # a resumed run directory continues its wandb run
            with open_no_follow(id_file, "r") as fh:
                run_id = fh.read(64).strip()
            if not (run_id.isascii() and run_id.isalnum()):
                raise RunFileError(id_file, "", f"holds {run_id[:20]!r}, not a wandb run id (letters and digits)",
                                   "delete the file to start a new wandb run for this run directory")
        else:
            run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
            with open_no_follow(id_file, "w") as fh:
                fh.write(run_id + "\n")
        name = cfg.log.wandb_run_prefix + os.path.basename(os.path.normpath(self.run_dir))
        # WANDB_MODE is read here, per run, rather than once per process by wandb's own settings singleton
        mode = _wandb_mode()
        try:
            run = wandb.init(project=cfg.log.wandb_project, entity=cfg.log.wandb_entity, name=name, id=run_id,
                             resume="allow", dir=self.run_dir, config=cfg.to_dict(), group=wandb_group(cfg),
                             tags=wandb_tags(cfg),
                             mode=mode if mode in ("online", "offline", "disabled") else None,
                             settings=wandb.Settings(console="off", silent=True))
        except Exception as e:  # not logged in, no network, bad entity...
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"wandb could not start a run: {first}; run `wandb login`, or set WANDB_MODE=offline "
                            "(sync later with `wandb sync`), or drop --wandb")
        run.config.update({"run_dir": os.path.abspath(self.run_dir)}, allow_val_change=True)
        # llm-baselines logs "iter" in every call; plot everything against it (robust to resumes, unlike _step)
        run.define_metric(K.ITER)
        run.define_metric("*", step_metric=K.ITER)
        self._wandb, self._wandb_mod = run, wandb

    def _wandb_log(self, metrics: dict, step: int) -> None:
        row: dict[str, Any] = scalars(metrics)
        load = _plain(metrics.get(K.MOE_LOAD))
        if isinstance(load, list) and load and isinstance(load[0], list):
            self._last_load = load  # tabled with the next samples (a table per log call would be thousands of files)
        row[K.ITER] = step
        self._wandb.log(row)

    def _load_table(self):
        load = self._last_load
        cols = ["layer"] + [f"e{j}" for j in range(len(load[0]))]
        return self._wandb_mod.Table(columns=cols, data=[[i] + [float(x) for x in r] for i, r in enumerate(load)])

    # ------------------------------------------------------------------ the interface
    def log(self, metrics: dict, step: int) -> None:
        """One row of metrics at optimizer step `step` (written to every enabled sink)."""
        if not self.enabled:
            return
        row = {K.ITER: step, **{k: _plain(v) for k, v in metrics.items() if k != K.ITER}}
        self._jsonl.write(json_text(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in scalars(metrics).items():
                if k != K.ITER:
                    self._tb.add_scalar(k, v, global_step=step)
        if self._wandb is not None:
            self._wandb_log(metrics, step)

    def log_text(self, step: int, prompt: str, text: str) -> None:
        """A generated sample: appended to samples.txt; wandb gets the growing table of all samples so far."""
        if not self.enabled:
            return
        with open_no_follow(rundir.samples_path(self.run_dir), "a") as fh:
            fh.write(f"--- iter {step} ---\n{text}\n")
        if self._tb is not None:
            self._tb.add_text(SAMPLES_TABLE, f"**{prompt}**{text[len(prompt):] if text.startswith(prompt) else text}",
                              global_step=step)
        if self._wandb is not None:
            self._sample_rows.append([step, prompt, text])
            table = self._wandb_mod.Table(columns=["iter", "prompt", "text"], data=[list(r) for r in self._sample_rows])
            row = {SAMPLES_TABLE: table, K.ITER: step}
            if self._last_load is not None:
                row[f"{K.MOE_LOAD}_table"] = self._load_table()
            self._wandb.log(row)

    def finish(self, summary: Optional[dict] = None) -> None:
        """Close every sink; the final metrics of `summary` (summary.json's dict) go to wandb.run.summary."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            run, self._wandb = self._wandb, None
            summary = summary or {}
            for k, v in flat_summary(summary).items():
                run.summary[k] = v
            failed = summary.get("status") == "failed"
            run.finish(exit_code=1 if failed else 0)
            # finish() can return before wandb's service process has flushed the run's .wandb file; shutting the
            # service down waits for it, so an offline run is complete (ready for `wandb sync`) when we return
            teardown = getattr(self._wandb_mod, "teardown", None)
            if teardown is not None:
                teardown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.finish({"status": "failed"} if exc[0] is not None else None)
        return False
