"""lmsprint: pretrain language models against the clock, and know honestly which idea won.

The Python API (`lmsprint/api.py`):
    lmsprint.train(**flags) or lmsprint.train(config) -> Run (run_dir, summary, config)
    lmsprint.load(RUN_DIR or "latest") -> LoadedModel (.model, .config, .tokenizer, .logits(ids), .generate(...))
`lmsprint.train` is also the name of the training subpackage (lmsprint/train/): that module object is made
callable, so both `lmsprint.train(...)` and `lmsprint.train.trainer` work whatever was imported first. The API
module is imported on first use, so `import lmsprint` (and with it `lmsprint bench`) does not import the training
stack's dependencies.
"""

from __future__ import annotations

import importlib
import types
from typing import TYPE_CHECKING

from . import train as _train_package  # the subpackage; its __init__ imports nothing
from .version import __version__

if TYPE_CHECKING:
    from .api import LoadedModel, Run, load, train  # noqa: F401

_API_NAMES = ("load", "Run", "LoadedModel")


def _api():
    return importlib.import_module("lmsprint.api")  # lazy: keeps `import lmsprint` light (see the module doc)


class _CallableTrainPackage(types.ModuleType):
    """The `lmsprint.train` subpackage, which called is `lmsprint.api.train`."""

    def __call__(self, *args, **kwargs):
        return _api().train(*args, **kwargs)


_train_package.__class__ = _CallableTrainPackage


def __getattr__(name: str):
    if name in _API_NAMES:
        return getattr(_api(), name)
    raise AttributeError(f"module 'lmsprint' has no attribute {name!r}")


__all__ = ["__version__", "train", "load", "Run", "LoadedModel"]
