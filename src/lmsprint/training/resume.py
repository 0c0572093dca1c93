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
"""

from __future__ import annotations

from typing import Iterable

from ..config import FLAGS, RESUME_SAFE, flatten, typed
from ..errors import ConfigError

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
