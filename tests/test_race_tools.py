"""The tools an equal-time race uses: `train --threads N`, `compare --reference` (every group judged against a
chosen group with the noise rule), seed groups named after the runs' `--exp_name` stem, and `sweep --parallel N`
(the points started together). Real CLI subprocesses and real run directories."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch

import lmsprint

SHAPE = {"n_layer": "1", "n_embd": "16", "n_head": "2", "sequence_length": "16", "batch_size": "4", "acc_steps": "1",
         "iterations": "4", "eval_freq": "4", "eval_tokens": "64", "sample_tokens": "0", "final_eval": "fixed",
         "quiet": "true", "threads": "1"}
TINY = ["--dataset", "tiny.txt", "--data_dir", "dc"] + [x for k, v in SHAPE.items() for x in (f"--{k}", v)]


def lmsprint_cli(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "lmsprint", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def one_error_line(p, fragment):
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmsprint: error: ") and fragment in lines[0], p.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog and runs away from home".split()
    (d / "tiny.txt").write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(300)))
    return d


# ---------------------------------------------------------------------------------------------------- --threads


def test_threads_sets_torch_threads_for_the_run(corpus):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run = lmsprint.train(**SHAPE, dataset=str(corpus / "tiny.txt"), data_dir=str(corpus / "dc"),
                             results_base_folder=str(corpus / "exps_threads"), exp_name="t")
        assert torch.get_num_threads() == 1 and run.config.train.threads == 1
    finally:
        torch.set_num_threads(before)


def test_threads_refuses_a_negative_count(corpus):
    one_error_line(lmsprint_cli("train", *TINY, "--threads", "-1", cwd=corpus), "--threads")
