"""The data a run reads: prepared (rank 0 first, cached), checked against the run, token files opened.

`load_data(cfg, world, progress)` is used by training, `lmsprint eval` and `lmsprint generate`. Before anything is
trained it refuses, in one line with the numbers: a manifest whose vocabulary disagrees with its tokenizer, token
ids outside `vocab_size`, a train or val split shorter than `sequence_length` + 1 tokens, and an `eval_seq_prefix`
the tokenizer cannot encode (a character outside a char vocabulary). The token files were verified against the
manifest when it was loaded (data/manifest.py).
"""

from __future__ import annotations

from ..data.loader import open_tokens
from ..data.manifest import Manifest, check_vocab
from ..data.prepare import prepare
from ..data.tokenizer import get_tokenizer
from ..errors import DataError
from .distributed import World, barrier


def check_data(cfg, manifest: Manifest, tok) -> None:
    """What the run needs of its data, checked before step 1 (DataError / ConfigError, one line)."""
    check_vocab(manifest, cfg.model.vocab_size)
    if tok.n_vocab != manifest.n_vocab:
        raise DataError(f"{manifest.dir}/manifest.json: field 'n_vocab' is {manifest.n_vocab}, but its "
                        f"{manifest.tokenizer} tokenizer has {tok.n_vocab} ids; prepare the data again into a new "
                        "`data_dir`")
    need = cfg.model.sequence_length + 1
    for split, n in (("train", manifest.train_tokens), ("val", manifest.val_tokens)):
        if n < need:
            more = "more data" if split == "train" else "a larger `val_fraction` or more data"
            raise DataError(f"the {split} split of {manifest.dataset or manifest.dir} has {n:,} tokens, fewer than "
                            f"`sequence_length` + 1 = {need:,}; use `sequence_length` <= {max(n - 1, 1):,} or {more}")
    prefix = cfg.log.eval_seq_prefix
    if prefix and cfg.log.sample_tokens:
        missing = sorted(set(prefix) - set(tok.vocab)) if tok.name == "char" else []
        if missing:
            raise DataError(f"`eval_seq_prefix` {prefix!r} has {', '.join(map(repr, missing))}, not in the char "
                            f"vocabulary of this data ({tok.n_vocab} characters); use characters of the training text "
                            "or `sample_tokens` 0")


def load_data(cfg, world: World, progress: bool = True):
    """Prepare (rank 0 first, cached) -> (manifest, tokenizer, train tokens, val tokens)."""
    if world.is_main:
        manifest = prepare(cfg.data, progress=progress)
    barrier(world)
    if not world.is_main:
        manifest = prepare(cfg.data, progress=False)
    tok = get_tokenizer(manifest)
    check_data(cfg, manifest, tok)
    # every batch is checked to hold ids of the tokenizer's vocabulary (data/loader.py), also past sampled blocks
    train_tokens = open_tokens(manifest.train_path, manifest.dtype, cfg.data.data_in_ram, manifest.n_vocab)
    val_tokens = open_tokens(manifest.val_path, manifest.dtype, cfg.data.data_in_ram, manifest.n_vocab)
    return manifest, tok, train_tokens, val_tokens
