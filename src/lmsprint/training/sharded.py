"""Sharded weights and optimizer state on disk, through `torch.distributed.checkpoint` (DCP).

Under `data_parallel` fsdp a checkpoint is `checkpoints/<name>.pt` (everything but the weights and the optimizer
state: step, clock, every rank's RNG and accumulators; `state.py`) plus a DCP folder next to it, named in the
.pt's `sharded` key, holding `{"model": ..., "optimizer": ...}` as `get_state_dict` gives them (FQN-keyed,
DTensor shards). DCP stores each shard with its global offsets, so the folder loads into any number of processes.

- `save_shards(model, optimizer, path)`: every rank writes its shards into `path` (a fresh folder; DCP's
  coordinator writes the metadata last, after every rank's data). The caller renames it into place: atomic.
  A full disk (or unwritable folder) on any rank is a `CheckpointError` on every rank (DCP gathers the failures);
  the caller removes the unfinished folder.
- `load_shards(model, optimizer, path)`: read a folder into this process's (sharded or plain) model and optimizer.
- `plain_model_state(path)` / `load_plain_model(model, path)`: the whole weights as plain CPU tensors / into a
  plain model, in one process without any process group (`lmsprint eval`, `generate`, `export`).
- `shard_dirs(ckpt_dir)`, `SHARDS`: the folder naming (`<ckpt>.shards-<step>-<tag>`, temporaries start with '.').

A shard folder is untrusted input: DCP's `.metadata` is a pickle, which `FileSystemReader.read_metadata` loads with
plain `pickle.load` (able to run any code). lmsprint never lets DCP read it: `read_shard_metadata(path, expected)`
unpickles it with `_MetadataUnpickler`, whose `find_class` allows only DCP's metadata classes and the plain values
they hold (torch.Size, torch dtypes and layouts, pathlib paths); anything else is a one-line `CheckpointError`
naming the global, before any object is built. It then checks the structure (every tensor entry's dtype, size and
chunks; every storage entry a plain file of the folder, no symbolic link out of it, long enough for its slice;
with `expected` {name: shape}, the model's shapes) and hands the checked object to DCP through `_CheckedReader`
(a FileSystemReader whose `read_metadata` returns it). DCP reads the tensors themselves with
`torch.load(weights_only=True)`, but the non-tensor entries (the optimizer's param groups: lr, betas, ...) with
`torch.load(weights_only=False)` in `DefaultLoadPlanner.load_bytes`, which would run a planted payload: lmsprint
loads through `_AllowListPlanner`, which unpickles each of them with `weights_only=True` first (torch's allow-list of
plain values and tensors), so a foreign global is refused before any object is built. A failure inside DCP (a
damaged shard, a refused entry) is a one-line CheckpointError too.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import warnings
from typing import Mapping, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata, MetadataIndex,
                                                   StorageMeta, TensorProperties, TensorStorageMetadata)
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ..errors import CheckpointError
from ..files import write_failure

SHARDS = ".shards-"
_HINT = "resume from another run or start a new one without `resume`"


def shard_dir_name(ckpt_name: str, step: int, tag: str) -> str:
    """`latest.pt` -> `latest.shards-<step>-<tag>`."""
    return f"{os.path.splitext(ckpt_name)[0]}{SHARDS}{int(step)}-{tag}"


def shard_dirs(ckpt_dir: str, ckpt_name: str) -> list[str]:
    """Names of the shard folders (finished or temporary) of checkpoint `ckpt_name` in `ckpt_dir`."""
    stem = os.path.splitext(ckpt_name)[0] + SHARDS
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(n for n in os.listdir(ckpt_dir) if n.lstrip(".").startswith(stem))


def save_shards(model: torch.nn.Module, optimizer, path: str) -> None:
    """Collective: every rank writes its shards of the model and optimizer state into the new folder `path`."""
    msd, osd = get_state_dict(model, optimizer)
    try:
        dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=path)
    except CheckpointException as e:  # a BaseException holding {rank: (exception, stack)} for every failed rank
        failed = {rank: f[0] if isinstance(f, tuple) else f for rank, f in e.failures.items()}
        why = {rank: write_failure(exc) for rank, exc in failed.items()}
        if not why or None in why.values():
            raise  # not a failed write: a bug, shown with its traceback
        ranks = ", ".join(map(str, sorted(why)))
        raise CheckpointError(f"cannot write checkpoint shards {path} (rank {ranks}): {next(iter(why.values()))}; "
                              "any earlier checkpoint is kept; free space (or make the folder writable) and "
                              "continue with `resume`") from None


def _missing(path: str) -> CheckpointError:
    return CheckpointError(f"checkpoint shards {path} are missing or corrupt (no .metadata); {_HINT}")


# ---------------------------------------------------------------------------------------------------- metadata

METADATA_FILE = ".metadata"
_METADATA_LIMIT = 1 << 30  # bytes: far more than the metadata of any model (a few hundred bytes per tensor)
# every global a DCP .metadata pickle may name: DCP's own dataclasses, and what they hold. Keyed by each class's own
# module and name (what pickle writes), so a class that moved between torch versions is found where it lives now
_DCP_CLASSES = {(c.__module__, c.__qualname__): c for c in (
    Metadata, MetadataIndex, StorageMeta, TensorProperties, TensorStorageMetadata, BytesStorageMetadata,
    ChunkStorageMetadata, _StorageInfo, getattr(dcp_metadata, "_MEM_FORMAT_ENCODING", None)) if c is not None}
_PATHS = {(m, n) for m in ("pathlib", "pathlib._local") for n in ("PosixPath", "PurePosixPath", "Path")}


class _MetadataUnpickler(pickle.Unpickler):
    """pickle.Unpickler that builds only DCP metadata: `find_class` refuses every other global, so a planted
    `__reduce__` (os.system, builtins.eval, ...) never runs."""

    def find_class(self, module: str, name: str):
        if (module, name) in _DCP_CLASSES:
            return _DCP_CLASSES[(module, name)]
        if module == "torch" and name == "Size":
            return torch.Size
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) == ("torch.serialization", "_get_layout"):  # a lookup among torch's layouts by name
            return torch.serialization._get_layout
        if (module, name) in _PATHS:  # StorageMeta.checkpoint_id, the folder it was saved to: a pure path (no I/O)
            return pathlib.PurePosixPath
        raise pickle.UnpicklingError(f"names the Python global {module}.{name}, which DCP metadata never holds")


def _bad(path: str, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint shards {path} are not lmsprint's: {why}; lmsprint never loads such a "
                           "folder (its pickle could run code): use a run from a source you trust")


def _is_size(v) -> bool:
    return isinstance(v, torch.Size) and all(isinstance(x, int) and x >= 0 for x in v)


def _check_tensor_entry(path: str, key: str, m: TensorStorageMetadata) -> None:
    props = getattr(m, "properties", None)
    if not isinstance(props, TensorProperties) or not isinstance(getattr(props, "dtype", None), torch.dtype):
        raise _bad(path, f"entry {key!r} has no tensor dtype")
    size = getattr(m, "size", None)
    if not _is_size(size):
        raise _bad(path, f"entry {key!r} has size {size!r}, not a torch.Size")
    chunks = getattr(m, "chunks", None)
    if not isinstance(chunks, list):
        raise _bad(path, f"entry {key!r} has no list of chunks")
    for c in chunks:
        if not (isinstance(c, ChunkStorageMetadata) and _is_size(getattr(c, "offsets", None))
                and _is_size(getattr(c, "sizes", None)) and len(c.offsets) == len(size) == len(c.sizes)
                and all(o + n <= d for o, n, d in zip(c.offsets, c.sizes, size))):
            raise _bad(path, f"entry {key!r} has a chunk outside its size {tuple(size)}")


def _check_storage(path: str, storage) -> None:
    if not isinstance(storage, dict):
        raise _bad(path, "its storage table is not a mapping")
    real = os.path.realpath(path)
    sizes: dict[str, int] = {}
    for index, info in storage.items():
        if not isinstance(index, MetadataIndex) or not isinstance(index.fqn, str):
            raise _bad(path, f"storage key {index!r} is not a metadata index")
        rel = getattr(info, "relative_path", None)
        if not isinstance(rel, str) or not rel or rel in (".", "..") or "/" in rel or "\\" in rel or "\0" in rel:
            raise _bad(path, f"entry {index.fqn!r} names the file {rel!r}, not a plain file of the folder")
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (offset, length)):
            raise _bad(path, f"entry {index.fqn!r} has offset {offset!r} and length {length!r}")
        if getattr(info, "transform_descriptors", None):  # lmsprint writes no transforms (compression, ...)
            raise _bad(path, f"entry {index.fqn!r} asks for stream transforms {info.transform_descriptors!r}")
        if rel not in sizes:
            file = os.path.join(path, rel)
            if os.path.islink(file) or not os.path.realpath(file).startswith(real + os.sep):
                raise _bad(path, f"its file {rel} is a symbolic link out of the folder")
            if not os.path.isfile(file):
                raise CheckpointError(f"checkpoint shards {path} are missing or corrupt (no {rel}); {_HINT}")
            sizes[rel] = os.path.getsize(file)
        if offset + length > sizes[rel]:
            raise CheckpointError(f"checkpoint shards {path} are missing or corrupt ({rel} holds {sizes[rel]:,} "
                                  f"bytes, its entry {index.fqn!r} ends at byte {offset + length:,}); {_HINT}")


def read_shard_metadata(path: str, expected: Optional[Mapping[str, tuple]] = None) -> Metadata:
    """The checked DCP metadata of shard folder `path` (see the module doc). `expected`: {"model.<name>": shape}
    every model entry must match (a shape of another model is refused before any tensor is allocated)."""
    file = os.path.join(path, METADATA_FILE)
    if not os.path.isfile(file):
        raise _missing(path)
    if os.path.islink(file) or os.path.islink(path.rstrip(os.sep)):
        raise _bad(path, "it is (or holds) a symbolic link")
    with open(file, "rb") as fh:
        raw = fh.read(_METADATA_LIMIT + 1)
    if len(raw) > _METADATA_LIMIT:
        raise _bad(path, f"its {METADATA_FILE} is larger than {_METADATA_LIMIT:,} bytes")
    try:
        md = _MetadataUnpickler(io.BytesIO(raw)).load()
    except pickle.UnpicklingError as e:
        raise _bad(path, f"its {METADATA_FILE} {' '.join(str(e).split())[:200]}") from None
    except Exception as e:  # a truncated or garbled pickle: EOFError, ValueError, TypeError, ...
        raise CheckpointError(f"checkpoint shards {path} are missing or corrupt ({METADATA_FILE}: "
                              f"{type(e).__name__}); {_HINT}") from None
    if not isinstance(md, Metadata) or not isinstance(getattr(md, "state_dict_metadata", None), dict):
        raise _bad(path, f"its {METADATA_FILE} holds {type(md).__name__}, not DCP metadata")
    for key, m in md.state_dict_metadata.items():
        if not isinstance(key, str):
            raise _bad(path, f"it has the entry {key!r}, not a name")
        if isinstance(m, TensorStorageMetadata):
            _check_tensor_entry(path, key, m)
        elif not isinstance(m, BytesStorageMetadata):
            raise _bad(path, f"entry {key!r} is a {type(m).__name__}")
    planner = getattr(md, "planner_data", None)
    if planner is not None and not (isinstance(planner, dict) and all(
            isinstance(k, str) and isinstance(v, tuple) and all(isinstance(x, (str, int)) for x in v)
            for k, v in planner.items())):
        raise _bad(path, "its planner data is not a mapping of names to key paths")
    if not isinstance(getattr(md, "storage_meta", None), (StorageMeta, type(None))):
        raise _bad(path, "its storage meta is not DCP's")
    _check_storage(path, md.storage_data)
    if expected is not None:
        have = {k: tuple(m.size) for k, m in md.state_dict_metadata.items()
                if k.startswith("model.") and isinstance(m, TensorStorageMetadata)}
        for key, shape in expected.items():
            if key not in have:
                raise CheckpointError(f"checkpoint shards {path} do not hold the tensor {key!r} of this model "
                                      "(config.yaml); was config.yaml edited?")
            if have[key] != tuple(shape):
                raise CheckpointError(f"checkpoint shards {path}: tensor {key!r} has shape {list(have[key])}, the "
                                      f"model of config.yaml needs {list(shape)}; was config.yaml edited?")
        extra = sorted(set(have) - set(expected))
        if extra:
            raise CheckpointError(f"checkpoint shards {path} hold {extra[0]!r}, no tensor of this model "
                                  "(config.yaml); was config.yaml edited?")
    return md


class _CheckedReader(dcp.FileSystemReader):
    """A FileSystemReader that hands DCP the metadata `read_shard_metadata` checked, never unpickling it itself."""

    def __init__(self, path: str, metadata: Metadata):
        super().__init__(path)
        self._checked = metadata

    def read_metadata(self, *args, **kwargs) -> Metadata:
        md = self._checked
        if getattr(md, "storage_meta", None) is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


class _Refused(ValueError):
    """A shard folder entry refused by the allow-list (raised inside DCP, reported by `_dcp_load`)."""


class _AllowListPlanner(dcp.DefaultLoadPlanner):
    """DCP's default load planner, except that a non-tensor entry is unpickled by torch's allow-list
    (`weights_only=True`): the default `load_bytes` unpickles it with `weights_only=False`. The checked value is
    handed on re-serialised, so DCP places it as usual (any torch version's planner)."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError:
            raise _Refused(f"its entry '{read_item.dest_index.fqn}' holds a pickled object outside torch's "
                           "weights_only allow-list (a checkpoint lmsprint wrote holds plain values there)") from None
        safe = io.BytesIO()
        torch.save(obj, safe)
        safe.seek(0)
        super().load_bytes(read_item, safe)


def _dcp_load(sd: dict, path: str, metadata: Metadata) -> None:
    """`dcp.load(sd)` from the checked folder `path`, non-tensor entries through the allow-list
    (`_AllowListPlanner`); a failure inside DCP is one CheckpointError line."""
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(sd, storage_reader=_CheckedReader(path, metadata), planner=_AllowListPlanner())
    except CheckpointException as e:  # a BaseException holding {rank: (exception, stack)} for every failed rank
        first = next(iter(e.failures.values()), None)
        exc = first[0] if isinstance(first, tuple) else first
        if isinstance(exc, _Refused):
            raise CheckpointError(f"checkpoint shards {path} refused: {exc}; {_HINT}") from None
        why = " ".join(str(exc).split())[:160] if exc is not None else "unknown failure"
        raise CheckpointError(f"checkpoint shards {path} are missing or corrupt ({why}); {_HINT}") from None
    except _Refused as e:
        raise CheckpointError(f"checkpoint shards {path} refused: {e}; {_HINT}") from None
    except (RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
        why = " ".join(str(e).split())[:160] or type(e).__name__
        raise CheckpointError(f"checkpoint shards {path} are missing or corrupt ({why}); {_HINT}") from None


def load_shards(model: torch.nn.Module, optimizer, path: str) -> None:
    """Collective: load the folder `path` into `model` and `optimizer` (any sharding, any number of processes)."""
    md = read_shard_metadata(path)
    msd, osd = get_state_dict(model, optimizer)
    sd = {"model": msd, "optimizer": osd}
    _dcp_load(sd, path, md)
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])


def plain_model_state(path: str, expected: Optional[Mapping[str, tuple]] = None) -> dict:
    """The weights of shard folder `path` as one plain {name: CPU tensor} dict, read in this single process without
    a process group: empty tensors shaped from DCP's (checked) metadata, filled by `dcp.load` (public API only).
    `expected`: {name: shape} of the model the weights are for (checked before anything is allocated)."""
    want = None if expected is None else {f"model.{k}": tuple(v) for k, v in expected.items()}
    md = read_shard_metadata(path, want)
    template = {k[len("model."):]: torch.empty(m.size, dtype=m.properties.dtype)
                for k, m in md.state_dict_metadata.items()
                if k.startswith("model.") and isinstance(m, TensorStorageMetadata)}
    sd = {"model": template}
    _dcp_load(sd, path, md)
    return sd["model"]


def load_plain_model(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """Load the weights of shard folder `path` into a plain (unsharded) `model` in this single process; no
    process group needed (DCP reads every shard a tensor spans)."""
    sd = {"model": model.state_dict()}
    md = read_shard_metadata(path, {f"model.{k}": tuple(v.shape) for k, v in sd["model"].items()})
    _dcp_load(sd, path, md)
    model.load_state_dict(sd["model"])
    return model
