"""lmsprint weights as `model.safetensors`: saving and loading a state_dict without pickle.

`save_weights(path, state_dict, model_config=None, extra=None)` writes the tensors with `safetensors`
atomically (`files.atomic_path`: temporary file in the same folder, fsync, `os.replace`), with string metadata:
- `format`: "pt" (what transformers expects of a safetensors file), `lmsprint_format`: WEIGHTS_FORMAT;
- `model_config`: the ModelConfig as JSON (so the file alone rebuilds the model), when given;
- `lmsprint_version`, `torch_version`: what wrote it;
- `aliases`: JSON {key: stored key} for tensors that share memory with another one (tied weights): safetensors
  refuses shared storage, so each one is stored once and restored as the same tensor on load;
- whatever `extra` holds (str -> str).

`write_safetensors(tensors, path, metadata)`: safetensors' `save_file`, except that a failed write (a full disk,
a file size limit, a read-only folder) is raised as the `OSError` it is (errno and file name), not as safetensors'
own `SafetensorError`, so that callers and the CLI treat it like any other failed write. Every safetensors file
lmsprint writes goes through it.

`load_weights(path) -> (state_dict, metadata)` reads it back (no pickle, no code execution) and re-links
aliases; `model_config_of(metadata)` returns the ModelConfig. A file that is not what `save_weights` writes is a
`RunFileError` naming the file and the field: a header safetensors refuses, `aliases` that are not a JSON object of
stored names, a `model_config` that is not a valid model config. Tensors sharing memory only partly (slices of one
storage) are stored as copies.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
from typing import Mapping, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..version import __version__
from ..config import ModelConfig, RunConfig
from ..errors import CheckpointError, RunFileError, UserError
from ..files import atomic_path

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_FORMAT = "1"
_OS_ERROR = re.compile(r"os error (\d+)")


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str, metadata: Optional[Mapping[str, str]] = None,
                      name: Optional[str] = None) -> None:
    """`save_file(tensors, path, metadata)`; a failed write raises OSError(errno, strerror, name or path)."""
    try:
        save_file(dict(tensors), path, metadata=dict(metadata) if metadata is not None else None)
    except SafetensorError as e:  # "Error while serializing: I/O error: No space left on device (os error 28)"
        found = _OS_ERROR.search(str(e))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code) if code in errno.errorcode else str(e), name or path) from e


def _storage_key(t: torch.Tensor):
    return (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
            t.dtype)


def save_weights(path: str, state_dict: Mapping[str, torch.Tensor], model_config: Optional[ModelConfig] = None,
                 extra: Optional[Mapping[str, str]] = None) -> None:
    """Atomically write `state_dict` to `path` as safetensors (tied tensors stored once, see module doc)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict = {}
    storages: set = set()
    for key, t in state_dict.items():
        t = t.detach()
        sk = _storage_key(t)
        if sk in seen:
            aliases[key] = seen[sk]
            continue
        seen[sk] = key
        ptr = (t.device.type, t.untyped_storage().data_ptr())
        shares = ptr in storages
        storages.add(ptr)
        tensors[key] = t.cpu().clone().contiguous() if shares or not t.is_contiguous() else t.cpu()
    meta = {"format": "pt", "lmsprint_format": WEIGHTS_FORMAT, "lmsprint_version": __version__,
            "torch_version": torch.__version__, "aliases": json.dumps(aliases)}
    if model_config is not None:
        meta["model_config"] = json.dumps(dataclasses.asdict(model_config))
    meta.update({str(k): str(v) for k, v in (extra or {}).items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        write_safetensors(tensors, tmp, meta, name=path)


def load_weights(path: str, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a file written by `save_weights` -> (state_dict, metadata); CheckpointError if unreadable."""
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file {path} is missing")
    try:
        with safe_open(path, framework="pt", device=device) as fh:
            meta = dict(fh.metadata() or {})
            sd = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as e:  # truncated header, not a safetensors file, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"weights file {path} is corrupt or not safetensors ({msg})")
    for key, target in _aliases(meta, sd, path).items():
        sd[key] = sd[target]
    return sd, meta


def _aliases(meta: Mapping[str, str], sd: Mapping[str, torch.Tensor], path: str) -> dict[str, str]:
    """The metadata's `aliases` ({name: stored name}), checked: a JSON object whose targets are stored tensors."""
    text = meta.get("aliases", "{}")
    try:
        aliases = json.loads(text)
    except ValueError as e:
        raise RunFileError(path, "metadata 'aliases'", f"is not JSON ({e})")
    if not isinstance(aliases, dict):
        raise RunFileError(path, "metadata 'aliases'", f"holds a {type(aliases).__name__}, not a JSON object of "
                           "tensor names")
    for key, target in aliases.items():
        if not isinstance(target, str) or target not in sd:
            raise RunFileError(path, "metadata 'aliases'", f"maps {key!r} to {target!r}, which is not a stored tensor")
    return aliases


def model_config_of(meta: Mapping[str, str], path: str = "the weights file") -> ModelConfig:
    """The ModelConfig saved in a weights file's metadata (validated like a run's config)."""
    if "model_config" not in meta:
        raise CheckpointError(f"{path} has no model config in its metadata; it was not written by lmsprint's "
                              "save_weights with a model config")
    try:
        d = json.loads(meta["model_config"])
        if not isinstance(d, dict):
            raise ValueError(f"a {type(d).__name__}, not a JSON object")
        return RunConfig.from_dict({"model": d}).validate().model
    except (ValueError, UserError) as e:
        raise RunFileError(path, "metadata 'model_config'", f"is not a model config ({e})") from None


__all__ = ["WEIGHTS_FILE", "save_weights", "load_weights", "model_config_of"]
