"""Resume checks: `--resume` continues exactly the run that was checkpointed, or is refused in one line.

- `data_identity(manifest)`: what a checkpoint records of the data it was trained on (tokenizer, source, dataset,
  vocabulary size, token dtype, token counts, SHA-256 of both token files).
- `check_config(saved, cfg, overrides, run_dir)`: the config saved inside the checkpoint against the config the
  resume would use (the run's config.yaml plus the flags given with --resume). Options marked `resume_safe` may
  differ (device, logging, checkpoint cadence, data location, ...); any other difference is refused unless its
  option name is in `overrides` (`--resume_override lr,batch_size`).
- `check_data(saved, manifest, overrides, run_dir)`: the checkpoint's data identity against the prepared data now;
  a difference is refused unless `overrides` holds `dataset`.
Both raise ConfigError naming every differing key with its old and new value.
- `kept_config(saved, cfg, overrides)`: the config the checkpoints of the resumed run save: the checkpoint's, with
  the changes accepted by `overrides` (a later resume of them needs no override again).
- `open_resume(spec, base, values, overrides)` -> (run_dir, cfg): what `lmsprint train --resume` and
  `lmsprint.train(resume=...)` both do before training: find the run (`rundir.resolve_run_dir`), take its lock,
  refuse a complete run or one without a checkpoint, and build the config (`resume_config`: the run's config.yaml
  plus the resume-safe values given, or those named in `overrides`; any other change is refused).
- `check_step(step, cfg, run_dir)`: a checkpoint past the run's end (`step` > `iterations`) is refused: it was not
  written by this run's config (an edited file, or `iterations` lowered); raising `iterations` above it with
  `resume_override` iterations continues it.
"""

from __future__ import annotations

import copy
import os
from typing import Iterable

from .. import rundir
from ..config import FLAGS, RESUME_SAFE, coerce, flatten, get_value, set_value, typed
from ..errors import ConfigError, UserError

DATA_KEY = "dataset"  # the --resume_override name that accepts a different dataset identity
_MISSING = object()


def data_identity(manifest) -> dict:
    """The identity of a prepared dataset ({} without a manifest)."""
    if manifest is None:
        return {}
    sha = manifest.sha256 or {}
    return {"tokenizer": str(manifest.tokenizer), "source": str(manifest.source), "dataset": str(manifest.dataset),
            "n_vocab": int(manifest.n_vocab), "dtype": str(manifest.dtype),
            "train_tokens": int(manifest.train_tokens), "val_tokens": int(manifest.val_tokens),
            "sha256_train": str(sha.get("train", "")), "sha256_val": str(sha.get("val", ""))}


def parse_overrides(text) -> frozenset:
    """`lr,dataset` -> {'lr', 'dataset'}; ConfigError for a name that is no option."""
    names = frozenset(n.strip().lstrip("-") for n in (text or "").split(",") if n.strip())
    unknown = sorted(n for n in names if n not in FLAGS and n != DATA_KEY)
    if unknown:
        raise ConfigError(f"`resume_override` names no option: {', '.join(unknown)}; give option names such as "
                          f"lr,batch_size (or {DATA_KEY} for a different dataset)")
    return names


def _shown(v) -> str:
    text = repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= 24 else text[:12] + "..."


def _refuse(run_dir: str, diffs: list[tuple[str, object, object]], where: str) -> None:
    listed = "; ".join(f"{k}: {_shown(a)} -> {_shown(b)}" for k, a, b in diffs)
    names = ",".join(dict.fromkeys(k.split(".")[0] for k, _, _ in diffs))
    raise ConfigError(f"`resume` of {run_dir} refused: {where} differs from the checkpoint in {listed}; restore it, "
                      f"or accept the change with `resume_override` {names}")


def check_config(saved: dict, cfg, overrides: Iterable[str], run_dir: str) -> None:
    """Refuse a resume whose config differs from the checkpoint's in an option neither resume-safe nor overridden."""
    if not saved:
        return
    old, new = typed(flatten(saved)), flatten(cfg.to_dict())  # a checkpoint of an older lmsprint, typed as now
    overrides = frozenset(overrides)
    diffs = []
    for name in FLAGS:
        if name in RESUME_SAFE or name in overrides:
            continue
        a, b = old.get(name, _MISSING), new.get(name, _MISSING)
        if a is _MISSING or b is _MISSING:  # an option of another lmsprint version: nothing to compare
            continue
        if a != b:
            diffs.append((name, a, b))
    if diffs:
        _refuse(run_dir, diffs, "the config (config.yaml and the flags given)")


def check_data(saved: dict, manifest, overrides: Iterable[str], run_dir: str) -> None:
    """Refuse a resume on data whose identity differs from the checkpoint's, unless `dataset` is overridden."""
    if not saved or DATA_KEY in frozenset(overrides):
        return
    now = data_identity(manifest)
    diffs = [(f"{DATA_KEY}.{k}", saved[k], now.get(k)) for k in saved if saved[k] != now.get(k)]
    if diffs:
        _refuse(run_dir, diffs, "the prepared data")


def kept_config(saved: dict, cfg, overrides: Iterable[str]) -> dict:
    """The config the checkpoints of a resumed run save: the checkpoint's own (`saved`: it keeps what the resume
    adapted only for this run's processes, `ranks.adapt_batch`) with every option named in `overrides` set to its
    accepted value in `cfg`, so a later resume of those checkpoints continues with the accepted values and needs no
    override again."""
    out = copy.deepcopy(saved)
    now = flatten(cfg.to_dict())
    for name in sorted(frozenset(overrides) & FLAGS.keys()):
        if not _replace(out, name, now[name]):  # not in the saved config (an older lmsprint): at its place now
            section = out
            for part in FLAGS[name][0][:-1]:
                if not isinstance(section.get(part), dict):
                    section[part] = {}
                section = section[part]
            section[name] = now[name]
    return out


def _replace(d: dict, name: str, value) -> bool:
    """Set option `name` wherever it is in the nested (or flat) config dict `d`; whether it was there."""
    if name in d and not isinstance(d[name], dict):
        d[name] = value
        return True
    return any(isinstance(v, dict) and _replace(v, name, value) for v in d.values())


def check_step(step: int, cfg, run_dir: str) -> None:
    """ConfigError if checkpoint step `step` lies past the run's last step (`iterations`)."""
    if step > cfg.train.iterations:
        raise ConfigError(f"`resume` of {run_dir} refused: its checkpoint is at step {step:,}, past the run's end "
                          f"(`iterations` {cfg.train.iterations:,}); the checkpoint is not this run's, or was edited: "
                          f"continue to a later end with `resume_override` iterations `iterations` N (N >= {step:,})")


def resume_config(run_dir: str, values: dict, overrides=frozenset()):
    """The run's saved config with the harmless given values (and those named in `overrides`) applied; UserError
    for any other change."""
    cfg = rundir.read_config(run_dir)
    changed = []
    for name, raw in values.items():
        if name not in FLAGS:
            continue
        value = coerce(name, raw)
        if name in RESUME_SAFE or name in overrides:
            set_value(cfg, name, value)
        elif value != get_value(cfg, name):
            changed.append(f"`{name}`")
    if changed:
        safe = ", ".join(sorted(f"`{s}`" for s in RESUME_SAFE if s != "results_base_folder"))
        raise UserError(f"`resume` continues {run_dir} with its own config; {', '.join(changed)} would change the run "
                        f"(only {safe} may be given); start a new run instead, or accept the change with "
                        f"`resume_override` {','.join(c.strip('`') for c in changed)}")
    return cfg.validate()


def open_resume(spec: str, base: str, values: dict, overrides=frozenset(), lock: bool = True):
    """(run_dir, cfg) of the run `spec` (a run directory or 'latest' in `base`) to continue; see the module doc.
    `lock=False` (`--print_config`): only read, take no lock."""
    run_dir = rundir.resolve_run_dir(spec, base)
    lock = lock and os.environ.get("RANK", "0") == "0"
    if lock:  # under torchrun rank 0 holds the lock for all ranks
        rundir.lock_run_dir(run_dir)  # a run another process is training is refused here, in one line
    try:
        summary = rundir.read_summary(run_dir) or {}
        if summary.get("status") == "complete":
            raise UserError(f"run {run_dir} is already complete; start a new run instead of `resume`")
        cfg = resume_config(run_dir, values, overrides)
        if not rundir.has_checkpoint(run_dir):
            raise UserError(f"checkpoint {rundir.checkpoint_path(run_dir)} is missing or corrupt (no such file); the "
                            "run stopped before its first checkpoint: start a new run instead of `resume`")
    except BaseException:
        if lock:
            rundir.unlock_run_dir(run_dir)  # a refused resume leaves the run free (a Python session goes on living)
        raise
    return run_dir, cfg
