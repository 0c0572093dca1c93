"""Bad input to `python -m lmsprint train`: one line on stderr, exit code 2, no traceback, no finished-looking
run dir. All cases run as real subprocesses, started together to keep the suite fast."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from lmsprint.config import build_config
from lmsprint.errors import UserError, cli_message
from lmsprint import rundir as runs
from lmsprint.hw import OOM_ERRORS
from lmsprint.training.step import oom_user_error

TINY = ["--n_layer", "1", "--n_embd", "16", "--n_head", "2", "--sequence_length", "8", "--batch_size", "2",
        "--acc_steps", "1", "--iterations", "2", "--progress", "false", "--eval_freq", "100",
        "--eval_tokens", "64", "--final_eval", "fixed", "--sample_tokens", "0", "--time_budget", "0"]


def _copy_prepared(manifest, dest):
    shutil.copytree(manifest.dir, dest)
    return str(dest)


def _cases(manifest, root):
    """name -> (argv after `train`, a fragment the one-line message must contain)."""
    prepared = manifest.dir
    missing = _copy_prepared(manifest, root / "missing")
    os.remove(os.path.join(missing, os.path.basename(manifest.train_path)))
    truncated = _copy_prepared(manifest, root / "truncated")
    val = os.path.join(truncated, os.path.basename(manifest.val_path))
    with open(val, "r+b") as fh:
        fh.truncate(os.path.getsize(val) - 1)
    # a run dir whose checkpoint never got written, and one whose checkpoint is garbage
    base = str(root / "exps")
    cfg = build_config({"results_base_folder": base})
    no_ckpt = runs.create_run_dir(cfg)
    runs.write_config(no_ckpt, cfg)
    bad_ckpt = runs.create_run_dir(cfg)
    runs.write_config(bad_ckpt, cfg)
    changed = runs.create_run_dir(cfg)  # its own run: the cases run at once, and a run is locked while resumed
    runs.write_config(changed, cfg)
    with open(os.path.join(bad_ckpt, "checkpoints", "latest.pt"), "wb") as fh:
        fh.write(b"PK\x03\x04 not really a checkpoint")
    d = ["--dataset", prepared]
    return {
        "n_embd_n_head": (["--n_embd", "65", "--n_head", "4"] + d, "not divisible by --n_head"),
        "sequence_length": (["--sequence_length", "0"] + d, "--sequence_length 0: must be >= 1"),
        "unknown_dataset": (["--dataset", str(root / "no_such_dataset"), "--data_dir", str(root / "dc")],
                            "unknown dataset"),
        "unknown_model": (["--model", "gpt5"] + d, "--model 'gpt5' is not one of"),
        "unknown_flag": (["--n_layers", "2"] + d, "did you mean --n_layer?"),
        "vocab_too_small": (TINY + ["--vocab_size", "1000"] + d, "smaller than the gpt2 tokenizer"),
        "time_budget": (["--time_budget", "five minutes"] + d, "cannot parse 'five minutes'"),
        "missing_tokens": (TINY + ["--dataset", missing], "missing"),
        "truncated_tokens": (TINY + ["--dataset", truncated], "truncated"),
        "tokenizer_mismatch": (TINY + d + ["--tokenizer", "char"], "tokenized with gpt2"),
        "resume_missing_ckpt": (["--resume", no_ckpt], "is missing or corrupt"),
        "resume_corrupt_ckpt": (["--resume", bad_ckpt, "--device", "cpu"], "is missing or corrupt"),
        "resume_changes_run": (["--resume", changed, "--lr", "0.5"], "--lr would change the run"),
        "resume_unknown_run": (["--resume", str(root / "nope")], "is not a run directory"),
    }


@pytest.fixture(scope="module")
def results(shakespeare_manifest, tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    cases = _cases(shakespeare_manifest, root)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = {}
    for name, (argv, _) in cases.items():
        cwd = root / f"cwd_{name}"
        cwd.mkdir()
        procs[name] = (subprocess.Popen([sys.executable, "-m", "lmsprint", "train", *argv,
                                         "--results_base_folder", str(cwd / "exps")] if "--resume" not in argv else
                                        [sys.executable, "-m", "lmsprint", "train", *argv],
                                        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                       cwd)
    out = {}
    for name, (p, cwd) in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[name] = (p.returncode, stdout, stderr, cwd)
    return cases, out, root


CASES = ["n_embd_n_head", "sequence_length", "unknown_dataset", "unknown_model", "unknown_flag", "vocab_too_small",
         "time_budget", "missing_tokens", "truncated_tokens", "tokenizer_mismatch", "resume_missing_ckpt",
         "resume_corrupt_ckpt", "resume_changes_run", "resume_unknown_run"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_2(results, name):
    cases, out, root = results
    rc, stdout, stderr, cwd = out[name]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert rc == 2, stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("lmsprint: error: "), stderr[-2000:]
    assert "Traceback" not in stderr
    assert cases[name][1] in lines[0]
    # nothing that looks like a finished run anywhere
    for base in (cwd / "exps", root / "exps"):
        if base.is_dir():
            for d in base.iterdir():
                s = runs.read_summary(str(d))
                assert s is None or s["status"] != "complete"


@pytest.mark.slow
def test_resume_failure_leaves_the_run_untouched(results):
    _, out, root = results
    for d in (root / "exps").iterdir():
        if d.is_dir():
            assert runs.read_summary(str(d)) is None  # a failed resume never writes into the run


def test_cuda_out_of_memory_becomes_a_user_error():
    assert torch.OutOfMemoryError in OOM_ERRORS
    err = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)")
    ue = oom_user_error(err, build_config({"batch_size": 8, "acc_steps": 2}))
    assert isinstance(ue, UserError)
    msg = cli_message(ue)
    assert "\n" not in msg and "out of GPU memory" in msg
    assert "--batch_size 4 --acc_steps 4" in msg and "--micro_batch auto" in msg
