"""lmsprint: pretrain language models against the clock, and know honestly which idea won.

The Python API (`lmsprint/api.py`):
    lmsprint.train(**flags) or lmsprint.train(config) -> Run (run_dir, summary, config);
    lmsprint.train(resume=RUN_DIR) continues a run as `lmsprint train --resume` does
    lmsprint.load(RUN_DIR or "latest") -> LoadedModel (.model, .config, .tokenizer, .logits(ids), .generate(...))
    lmsprint.tokenizer("gpt2" | "char" | PATH) -> the offline tokenizer (.encode, .decode, .n_vocab, .eot)
These names are the API module's own functions and classes (their signatures and docs are the real ones); the
training code lives in the `lmsprint.training` package. The API module is imported on first use, so
`import lmsprint` (and with it the CLI's `--help`) does not import torch or the training stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

if TYPE_CHECKING:
    from .api import LoadedModel, Run, load, tokenizer, train  # noqa: F401

_API_NAMES = ("train", "load", "tokenizer", "Run", "LoadedModel")


def __getattr__(name: str):
    if name in _API_NAMES:  # lazy: keeps `import lmsprint` light (see the module doc)
        return getattr(importlib.import_module("lmsprint.api"), name)
    raise AttributeError(f"module 'lmsprint' has no attribute {name!r}")


__all__ = ["__version__", "train", "load", "tokenizer", "Run", "LoadedModel"]
