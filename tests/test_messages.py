"""What the CLI and the API say: counts with their plural ("1 process", "2 processes"), a line when generation stops
at the end-of-text token, a missing file named as missing (never "the disk may be full"), and the public offline
tokenizer (`lmsprint.tokenizer`), as the README's nanoGPT-data section uses it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import lmsprint
from lmsprint import rundir
from lmsprint.cli import os_error_message
from lmsprint.config import DataConfig, build_config
from lmsprint.data.prepare import prepare
from lmsprint.errors import UserError, plural
from lmsprint.model.transformer import Transformer
from lmsprint.training.artifacts import write_run_files, write_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def test_plural():
    assert [plural(n, "process") for n in (0, 1, 2)] == ["0 processes", "1 process", "2 processes"]
    assert plural(1, "batch") == "1 batch" and plural(3, "micro-batch") == "3 micro-batches"
    assert plural(12345, "token") == "12,345 tokens" and plural(1, "run") == "1 run"
    assert plural(2, "more file", "more files") == "2 more files"


def test_a_missing_file_is_named_not_blamed_on_the_disk():
    e = FileNotFoundError("Unable to find '/data/tasks/missing.jsonl'")  # a library's message, no errno
    assert os_error_message(e) == "Unable to find '/data/tasks/missing.jsonl'; check the path"
    e = OSError("123 requested and 0 written")  # numpy's short write: that one is the disk
    assert "the disk may be full" in os_error_message(e)


@pytest.fixture
def eot_run(tmp_path):
    """A run directory whose model always predicts GPT-2's end-of-text token: blocks that add nothing
    (zero-initialised output projections), every embedding the same vector, and an untied head whose only non-zero
    row is end-of-text's (RMSNorm keeps the all-ones hidden state, so that row's logit is 32, every other one 0)."""
    cfg = build_config({"model": "llama2", "n_layer": 1, "n_embd": 32, "n_head": 2, "sequence_length": 32,
                        "zero_init_proj": True, "tie_embeddings": False, "results_base_folder": str(tmp_path)})
    model = Transformer(cfg.model)
    eot = lmsprint.tokenizer("gpt2").eot
    with torch.no_grad():
        model.wte.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[eot] = 1.0
    run = rundir.create_run_dir(cfg)
    rundir.write_config(run, cfg)
    write_run_files(run, lmsprint.tokenizer("gpt2"))
    write_weights(run, model, cfg.model, 1)
    return run


def test_generate_says_when_it_stops_at_end_of_text(eot_run, in_process):
    p = in_process("generate", eot_run, "--prompt", "Hello", "--max_new_tokens", "20", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "Hello\n"  # the text alone on stdout
    assert p.stderr.strip() == "lmsprint: the sample stopped at the end-of-text token after 1 token " \
                               "(--max_new_tokens 20)"
    p = in_process("generate", eot_run, "--num_samples", "2", "--temperature", "0", "--device", "cpu")
    assert p.returncode == 0 and p.stderr.count("stopped at the end-of-text token") == 2
    assert "lmsprint: sample 2 stopped at the end-of-text token after 1 token" in p.stderr
    # a sample that reaches --max_new_tokens says nothing
    p = in_process("generate", eot_run, "--max_new_tokens", "0", "--device", "cpu")
    assert p.returncode == 0 and p.stderr == ""


def test_public_tokenizer_writes_nanogpt_files_that_prepare_reads(tmp_path):
    """The README's nanoGPT-data example: token files written with lmsprint.tokenizer("gpt2") are read in place."""
    tok = lmsprint.tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995] and tok.eot == 50256 and tok.n_vocab == 50257  # GPT-2's ids
    assert tok.decode(tok.encode("ROMEO: O, she doth teach")) == "ROMEO: O, she doth teach"
    text = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog." for i in range(4000))
    folder = tmp_path / "mydata"
    folder.mkdir()
    for split, part in (("train", text[: len(text) * 9 // 10]), ("val", text[len(text) * 9 // 10:])):
        np.array(tok.encode(part) + [tok.eot], dtype=np.uint16).tofile(folder / f"{split}.bin")
    m = prepare(DataConfig(dataset=str(folder), data_dir=str(tmp_path / "cache")), progress=False)
    assert m.train_tokens == os.path.getsize(folder / "train.bin") // 2 and m.tokenizer == "gpt2"

    char = lmsprint.tokenizer("char")
    assert char.decode(char.encode("ROMEO:")) == "ROMEO:" and char.eot is None
    assert lmsprint.tokenizer("char", vocab="ab").encode("ba") == [1, 0]
    with pytest.raises(UserError, match="tokenizer"):
        lmsprint.tokenizer("no-such-tokenizer")
    with pytest.raises(TypeError, match="name must be"):  # a typed API error (ArgumentTypeError)
        lmsprint.tokenizer(None)
