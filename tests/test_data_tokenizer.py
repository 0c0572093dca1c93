"""Tokenizers: GPT-2 ids built offline match the reference ids, char round trips, byte lengths for bits-per-byte."""

import numpy as np
import pytest

from lmsprint.data.sources import shakespeare_chars, shakespeare_documents
from lmsprint.data.tokenizer import char_vocab, get_tokenizer
from lmsprint.errors import UserError


def test_gpt2_reference_ids():
    tok = get_tokenizer("gpt2")
    assert tok.name == "gpt2" and tok.n_vocab == 50257 and tok.eot == 50256
    assert tok.encode("hello world") == [31373, 995]
    assert tok.encode(" the") == [262]
    assert tok.encode_batch(["hello world", "Hello"]) == [[31373, 995], [15496]]
    # separator text inside a document is ordinary text, never the separator id
    assert 50256 not in tok.encode("a <|endoftext|> b")


def test_gpt2_round_trip_and_token_bytes():
    tok = get_tokenizer("gpt2")
    text = shakespeare_documents()[5][:3000] + " naïve — café"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    tb = tok.token_bytes()
    assert tb.dtype == np.int64 and tb.shape == (50257,)
    assert tb[tok.eot] == 0 and tb[31373] == len(b"hello")
    assert int(tb[ids].sum()) == len(text.encode("utf-8"))


def test_char_round_trip_and_vocab():
    text = "".join(shakespeare_documents()[:20])
    tok = get_tokenizer("char")
    assert tok.vocab == shakespeare_chars() == "".join(sorted(set("".join(shakespeare_documents()))))
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.eot is None and tok.n_vocab == len(tok.vocab)
    assert ids[:3] == [tok.vocab.index(c) for c in text[:3]]
    custom = get_tokenizer("char", vocab=char_vocab(["bca", "ab"]))
    assert custom.vocab == "abc" and custom.encode("cab") == [2, 0, 1]
    assert list(custom.token_bytes()) == [1, 1, 1]
    with pytest.raises(UserError, match="not in the char vocabulary"):
        custom.encode("abd")


def test_unknown_tokenizer():
    with pytest.raises(UserError, match="gpt2, char"):
        get_tokenizer("bpe32k")
