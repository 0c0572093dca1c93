"""What makes a run directory self-contained, written by training and read by `eval`, `generate`, `export` and the
Python API (`lmsprint.load`): the weights as safetensors, the tokenizer description, the versions.

- `write_run_files(run_dir, tok)`: `tokenizer_info.json` (`export.describe_tokenizer`: gpt2, the char tokenizer's
  characters, or a Hugging Face tokenizer's whole tokenizer.json text) and `versions.json` (lmsprint, torch,
  python). Written once, when the run starts; neither changes during a run.
- `write_weights(run_dir, model, model_cfg, step)`: `model.safetensors` (no pickle; the model config and the step in
  its metadata), next to every checkpoint, so it always holds the latest weights and, at the end, the final ones.
- `run_tokenizer(run_dir, cfg)` / `run_tokenizer_info(run_dir, cfg)`: the tokenizer rebuilt from the run directory
  alone (offline, no data cache). A run written before tokenizer_info.json existed falls back to its data manifest.
- `load_run_weights(run_dir, checkpoint, model_cfg)` -> (state_dict, step, source): `checkpoints/<checkpoint>` if
  named, else model.safetensors, else checkpoints/latest.pt. `load_run_model(...)` builds the model on a device in
  eval mode.
Every file name comes from `lmsprint.rundir`. What is read is checked where it is read, each error one line naming
the file and the field (`RunFileError`): tokenizer_info.json (`read_tokenizer_info`: a name, a vocabulary of the
right type that rebuilds the tokenizer, as many tokens as its `n_vocab` field records (older runs have no such
field); `check_tokenizer_fits`: no more tokens than the model's `vocab_size`), the safetensors metadata (its
`step` a whole number), and the weights (`check_weights`: exactly the model's tensor names and shapes from
config.yaml, floating point, all finite; NaN weights are refused rather than evaluated, sampled or exported).
Every file must lie inside the run (`rundir.check_inside`).
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
from ..errors import CheckpointError, RunFileError, UserError
from ..export import describe_tokenizer, load_weights, save_weights
from ..export.hf_tokenizer import is_hf_state
from ..files import atomic_write_text
from ..hw import unwrap
from ..model.transformer import Transformer
from .sharded import plain_model_state
from .state import load_checkpoint


def versions() -> dict:
    return {"lmsprint": __version__, "torch": torch.__version__, "python": platform.python_version()}


def write_run_files(run_dir: str, tok) -> None:
    """tokenizer_info.json and versions.json (see the module doc)."""
    info = {**describe_tokenizer(tok), "n_vocab": int(tok.n_vocab)}
    atomic_write_text(rundir.tokenizer_info_path(run_dir), json.dumps(info, indent=1) + "\n")
    atomic_write_text(rundir.versions_path(run_dir), json.dumps(versions(), indent=1) + "\n")


def write_weights(run_dir: str, model: torch.nn.Module, model_cfg, step: int) -> None:
    """model.safetensors with the current weights (atomic: a reader never sees half a file)."""
    save_weights(rundir.weights_path(run_dir), unwrap(model).state_dict(), model_cfg, extra={"step": str(int(step))})


_REBUILD = "the run's tokenizer cannot be rebuilt from it; use an intact copy of the run"


def read_tokenizer_info(run_dir: str) -> Optional[dict]:
    """tokenizer_info.json checked ({name, vocab[, n_vocab]}), None if the run has none (older runs)."""
    path = rundir.tokenizer_info_path(run_dir)
    if not os.path.lexists(path):
        return None
    text = rundir.read_text(run_dir, path, limit=1 << 28)
    try:
        d = json.loads(text)
    except ValueError as e:
        raise RunFileError(path, "", f"is not valid JSON ({e})", _REBUILD)
    if not isinstance(d, dict):
        raise RunFileError(path, "", f"holds a {type(d).__name__}, not a JSON object", _REBUILD)
    name, vocab = d.get("name"), d.get("vocab")
    if not isinstance(name, str) or not name:
        raise RunFileError(path, "field 'name'", f"is {str(name)[:40]!r}, not a tokenizer name", _REBUILD)
    if name == "gpt2":
        ok, what = vocab is None, "null (gpt2's vocabulary is built in)"
    elif name == "char":
        ok = isinstance(vocab, str) and bool(vocab) and len(set(vocab)) == len(vocab)
        what = "the char tokenizer's characters (a string of distinct characters)"
    else:
        ok, what = is_hf_state(vocab), "a Hugging Face tokenizer.json text"
    if not ok:
        shown = type(vocab).__name__ if not isinstance(vocab, str) else repr(vocab[:20])
        raise RunFileError(path, "field 'vocab'", f"is {shown}, not {what}", _REBUILD)
    n = d.get("n_vocab")
    if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
        raise RunFileError(path, "field 'n_vocab'", f"is {n!r}, not a vocabulary size", _REBUILD)
    try:
        info = describe_tokenizer({"name": name, "vocab": vocab})
        tok = get_tokenizer(info["name"], info["vocab"])
    except UserError as e:
        raise RunFileError(path, "field 'vocab'", f"does not rebuild a tokenizer ({e})", _REBUILD) from None
    if n is not None and tok.n_vocab != n:
        raise RunFileError(path, "field 'vocab'", f"holds {tok.n_vocab} tokens, but field 'n_vocab' says {n}",
                           _REBUILD)
    return {**info, "n_vocab": tok.n_vocab}


def check_tokenizer_fits(info: dict, cfg: RunConfig, run_dir: str) -> None:
    """The tokenizer must fit the model: at most `vocab_size` tokens (config.yaml)."""
    path = rundir.tokenizer_info_path(run_dir)
    n = info.get("n_vocab")
    if n is None:
        n = get_tokenizer(info["name"], info["vocab"]).n_vocab
    if n > cfg.model.vocab_size:
        raise RunFileError(path, "field 'vocab'", f"holds {n:,} tokens, more than the model's vocab_size "
                           f"{cfg.model.vocab_size:,} ({rundir.CONFIG_FILE}): it is not this model's tokenizer", _REBUILD)


def run_tokenizer_info(run_dir: str, cfg: RunConfig) -> dict:
    """The run's tokenizer description: tokenizer_info.json (checked against the model), or (older runs) from its
    prepared data."""
    info = read_tokenizer_info(run_dir)
    if info is None:
        info = describe_tokenizer(prepare(cfg.data, progress=False))
    check_tokenizer_fits(info, cfg, run_dir)
    return info


def run_tokenizer(run_dir: str, cfg: RunConfig):
    """The run's tokenizer (encode/decode), rebuilt offline from the run directory."""
    info = run_tokenizer_info(run_dir, cfg)
    return get_tokenizer(info["name"], info["vocab"])


def expected_shapes(model_cfg) -> dict[str, tuple]:
    """{name: shape} of the state_dict of a Transformer built from `model_cfg` (built on the meta device: no
    memory, no initialisation)."""
    # the orthogonal parametrization (`orthogonal_qkv`) registers its `base` buffer only when it computes an initial
    # orthogonal matrix, which the meta device skips: that model is built on the CPU
    with torch.device("cpu" if model_cfg.attn.orthogonal_qkv else "meta"):
        model = Transformer(model_cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_weights(sd, model_cfg, source: str) -> None:
    """RunFileError unless `sd` holds exactly the model's tensors (names and shapes from `model_cfg`), floating
    point and finite."""
    if not isinstance(sd, dict):
        raise RunFileError(source, "", "holds no weights", "use an intact copy of the run")
    want = expected_shapes(model_cfg)
    hint = f"these weights are not the model of {rundir.CONFIG_FILE}: was it edited?"
    for name in want:
        if name not in sd:
            raise RunFileError(source, f"tensor '{name}'", "is missing", hint)
    for name, t in sd.items():
        if name not in want:
            raise RunFileError(source, f"tensor '{name}'", "is no tensor of this model", hint)
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise RunFileError(source, f"tensor '{name}'", f"is {getattr(t, 'dtype', type(t).__name__)}, not "
                               "floating point", hint)
        if tuple(t.shape) != want[name]:
            raise RunFileError(source, f"tensor '{name}'", f"has shape {list(t.shape)}, the model needs "
                               f"{list(want[name])}", hint)
    for name, t in sd.items():
        if not bool(torch.isfinite(t).all()):
            raise RunFileError(source, f"tensor '{name}'", "holds non-finite values (NaN or inf)",
                               "the run diverged or the file is damaged; use an earlier checkpoint (--checkpoint) "
                               "or retrain")


def _step_of(meta: dict, path: str) -> int:
    step = meta.get("step", "0")
    if not (isinstance(step, str) and step.isascii() and step.isdigit()):
        raise RunFileError(path, "metadata 'step'", f"is {str(step)[:30]!r}, not a whole number",
                           "use an intact copy of the run")
    return int(step)


def load_run_weights(run_dir: str, checkpoint: Optional[str] = None,
                     model_cfg=None) -> tuple[dict, int, str]:
    """(state_dict, step, path it came from); see the module doc for which file is read. With `model_cfg`, the
    weights are checked against that model (`check_weights`)."""
    if checkpoint:
        path = rundir.checkpoint_path(run_dir, checkpoint)
        if os.path.basename(checkpoint) != checkpoint or checkpoint in (".", "..") or not os.path.isfile(path):
            ckpt_dir = os.path.dirname(rundir.checkpoint_path(run_dir))
            have = sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else []
            raise UserError(f"no checkpoint '{checkpoint}' in {ckpt_dir}; choose one of: {', '.join(have) or 'none'}")
    elif os.path.isfile(rundir.weights_path(run_dir)):
        path = rundir.check_inside(run_dir, rundir.weights_path(run_dir))
        sd, meta = load_weights(path)
        step = _step_of(meta, path)
        if model_cfg is not None:
            check_weights(sd, model_cfg, path)
        return sd, step, path
    else:
        path = rundir.checkpoint_path(run_dir)
    rundir.check_inside(run_dir, path)
    state = load_checkpoint(path)
    if state.get("sharded"):  # data_parallel fsdp: the weights are in the DCP folder it names
        shards = rundir.check_inside(run_dir, os.path.join(os.path.dirname(path), state["sharded"]))
        sd = plain_model_state(shards, expected_shapes(model_cfg) if model_cfg is not None else None)
    else:
        sd = state["model"]
    if model_cfg is not None:
        check_weights(sd, model_cfg, path)
    return sd, state["step"], path


def load_run_model(run_dir: str, cfg: RunConfig, checkpoint: Optional[str] = None,
                   device: str = "cpu") -> tuple[Transformer, int]:
    """(model on `device` in eval mode, step) from the run's weights (checked: `check_weights`)."""
    sd, step, path = load_run_weights(run_dir, checkpoint, cfg.model)
    model = Transformer(cfg.model)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint of {run_dir} does not match its config.yaml "
                              f"({str(e).splitlines()[0][:120]}); was config.yaml edited?")
    return model.to(device).eval(), step


__all__ = ["versions", "write_run_files", "write_weights", "read_tokenizer_info", "check_tokenizer_fits",
           "run_tokenizer_info", "run_tokenizer", "expected_shapes", "check_weights", "load_run_weights",
           "load_run_model"]
