"""The data a run reads: prepared (rank 0 first, cached), vocabulary checked, token files opened.

`load_data(cfg, world, progress)` is used by training, `lmsprint eval` and `lmsprint generate`.
"""

from __future__ import annotations

from ..data.loader import open_tokens
from ..data.manifest import check_vocab
from ..data.prepare import prepare
from ..data.tokenizer import get_tokenizer
from .distributed import World, barrier


def load_data(cfg, world: World, progress: bool = True):
    """Prepare (rank 0 first, cached) -> (manifest, tokenizer, train tokens, val tokens)."""
    if world.is_main:
        manifest = prepare(cfg.data, progress=progress)
    barrier(world)
    if not world.is_main:
        manifest = prepare(cfg.data, progress=False)
    check_vocab(manifest, cfg.model.vocab_size)
    tok = get_tokenizer(manifest)
    train_tokens = open_tokens(manifest.train_path, manifest.dtype, cfg.data.data_in_ram)
    val_tokens = open_tokens(manifest.val_path, manifest.dtype, cfg.data.data_in_ram)
    return manifest, tok, train_tokens, val_tokens
