"""What makes a run directory self-contained, written by training and read by `eval`, `generate`, `export` and the
Python API (`lmsprint.load`): the weights as safetensors, the tokenizer description, the versions.

- `write_run_files(run_dir, tok)`: `tokenizer_info.json` (`export.describe_tokenizer`: gpt2, the char tokenizer's
  characters, or a Hugging Face tokenizer's whole tokenizer.json text) and `versions.json` (lmsprint, torch,
  python). Written once, when the run starts; neither changes during a run.
- `write_weights(run_dir, model, model_cfg, step)`: `model.safetensors` (no pickle; the model config and the step in
  its metadata), next to every checkpoint, so it always holds the latest weights and, at the end, the final ones.
- `run_tokenizer(run_dir, cfg)` / `run_tokenizer_info(run_dir, cfg)`: the tokenizer rebuilt from the run directory
  alone (offline, no data cache). A run written before tokenizer_info.json existed falls back to its data manifest.
- `load_run_weights(run_dir, checkpoint)` -> (state_dict, step, source): `checkpoints/<checkpoint>` if named, else
  model.safetensors, else checkpoints/latest.pt. `load_run_model(...)` builds the model on a device in eval mode.
Every file name comes from `lmsprint.rundir`.
"""

from __future__ import annotations

import json
import os
import platform
from typing import Optional

import torch

from .. import rundir
from ..version import __version__
from ..config import RunConfig
from ..data.prepare import prepare
from ..data.tokenizer import get_tokenizer
from ..errors import CheckpointError, UserError
from ..export import describe_tokenizer, load_weights, save_weights
from ..files import atomic_write_text
from ..hw import unwrap
from ..model.transformer import Transformer
from .sharded import plain_model_state
from .state import load_checkpoint


def versions() -> dict:
    return {"lmsprint": __version__, "torch": torch.__version__, "python": platform.python_version()}


def write_run_files(run_dir: str, tok) -> None:
    """tokenizer_info.json and versions.json (see the module doc)."""
    atomic_write_text(rundir.tokenizer_info_path(run_dir), json.dumps(describe_tokenizer(tok), indent=1) + "\n")
    atomic_write_text(rundir.versions_path(run_dir), json.dumps(versions(), indent=1) + "\n")


def write_weights(run_dir: str, model: torch.nn.Module, model_cfg, step: int) -> None:
    """model.safetensors with the current weights (atomic: a reader never sees half a file)."""
    save_weights(rundir.weights_path(run_dir), unwrap(model).state_dict(), model_cfg, extra={"step": str(int(step))})


def read_tokenizer_info(run_dir: str) -> Optional[dict]:
    path = rundir.tokenizer_info_path(run_dir)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return describe_tokenizer(json.load(fh))
    except ValueError as e:
        raise CheckpointError(f"{path} is damaged ({e}); the run's tokenizer cannot be rebuilt from it")


def run_tokenizer_info(run_dir: str, cfg: RunConfig) -> dict:
    """The run's tokenizer description: tokenizer_info.json, or (older runs) from its prepared data."""
    info = read_tokenizer_info(run_dir)
    if info is None:
        info = describe_tokenizer(prepare(cfg.data, progress=False))
    return info


def run_tokenizer(run_dir: str, cfg: RunConfig):
    """The run's tokenizer (encode/decode), rebuilt offline from the run directory."""
    info = run_tokenizer_info(run_dir, cfg)
    return get_tokenizer(info["name"], info["vocab"])


def load_run_weights(run_dir: str, checkpoint: Optional[str] = None) -> tuple[dict, int, str]:
    """(state_dict, step, path it came from); see the module doc for which file is read."""
    if checkpoint:
        path = rundir.checkpoint_path(run_dir, checkpoint)
        if os.path.basename(checkpoint) != checkpoint or not os.path.isfile(path):
            ckpt_dir = os.path.dirname(rundir.checkpoint_path(run_dir))
            have = sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else []
            raise UserError(f"no checkpoint '{checkpoint}' in {ckpt_dir}; choose one of: {', '.join(have) or 'none'}")
    elif os.path.isfile(rundir.weights_path(run_dir)):
        path = rundir.weights_path(run_dir)
        sd, meta = load_weights(path)
        return sd, int(meta.get("step", 0)), path
    else:
        path = rundir.checkpoint_path(run_dir)
    state = load_checkpoint(path)
    if state.get("sharded"):  # data_parallel fsdp: the weights are in the DCP folder it names
        return plain_model_state(os.path.join(os.path.dirname(path), state["sharded"])), int(state["step"]), path
    return state["model"], int(state["step"]), path


def load_run_model(run_dir: str, cfg: RunConfig, checkpoint: Optional[str] = None,
                   device: str = "cpu") -> tuple[Transformer, int]:
    """(model on `device` in eval mode, step) from the run's weights."""
    sd, step, path = load_run_weights(run_dir, checkpoint)
    model = Transformer(cfg.model)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint of {run_dir} does not match its config.yaml "
                              f"({str(e).splitlines()[0][:120]}); was config.yaml edited?")
    return model.to(device).eval(), step


__all__ = ["versions", "write_run_files", "write_weights", "read_tokenizer_info", "run_tokenizer_info",
           "run_tokenizer", "load_run_weights", "load_run_model"]
