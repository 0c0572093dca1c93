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


# ---------------------------------------------------------------------------------------------------- CPU memory
# torch's CPU allocator raises a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory"), not
# torch.OutOfMemoryError: it was a traceback, possibly while building the model, before any step


def test_cpu_allocation_failures_are_recognized():
    from lmsprint.errors import is_out_of_memory, out_of_memory_text

    with pytest.raises(RuntimeError) as e:
        torch.empty(2**50, dtype=torch.uint8)  # 1 PiB: refused at once, nothing is touched
    assert is_out_of_memory(e.value) and out_of_memory_text(e.value) == "out of CPU memory (tried to allocate " \
        "1125899.91 GB)"
    assert is_out_of_memory(MemoryError()) and is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory."))
    assert not is_out_of_memory(RuntimeError("shape mismatch")) and not is_out_of_memory(ValueError("x"))


@pytest.mark.parametrize("shape,fragment", [
    (["--n_embd", "2147483646", "--n_head", "2"], "--n_embd 2147483646"),  # the embedding: 825 GB
    (["--moe_num_experts", "2147483647", "--n_embd", "32", "--n_head", "2"], "--moe_num_experts 2147483647"),
])
def test_a_model_too_large_to_build_is_one_line(shakespeare_manifest, tmp_path, in_process, shape, fragment):
    p = in_process("train", "--dataset", shakespeare_manifest.dir, *TINY, *shape, "--results_base_folder", "exps")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    line = p.stderr.strip()
    assert line.startswith("lmsprint: error: out of CPU memory at --batch_size 2 x --sequence_length 8 (tried to "
                           "allocate ") and fragment in line and "--micro_batch auto" not in line, line
    assert not (tmp_path / "exps").exists()  # refused while building the model, before the run directory


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="RLIMIT_AS in a child process")
@pytest.mark.parametrize("shape", [["--n_embd", "65536", "--n_head", "2"],
                                   ["--moe_num_experts", "100000", "--n_embd", "64", "--n_head", "2"],
                                   ["--batch_size", "100000", "--sequence_length", "128", "--n_embd", "64"]])
def test_out_of_cpu_memory_under_an_address_space_limit_is_one_line(shakespeare_manifest, tmp_path, shape):
    """The README's shapes, in a child limited to 4 GB of address space, so that the allocation fails at once
    instead of pushing this machine into swap: `--n_embd 65536` (13 GB embedding), 100,000 experts (6.6 GB),
    and a batch of 100,000 sequences of 128 tokens (its 3.3 GB embedding output fails in the first step, after the
    run directory exists)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 * 10**9, 4 * 10**9))

    argv = [sys.executable, "-m", "lmsprint", "train", "--dataset", shakespeare_manifest.dir, *TINY, *shape,
            "--results_base_folder", "exps", "--threads", "1"]
    p = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600, preexec_fn=limit,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 2, p.stderr[-3000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("lmsprint: error: ")]
    assert "Traceback" not in p.stderr and len(errors) == 1, p.stderr[-3000:]
    assert errors[0].startswith("lmsprint: error: out of CPU memory at --batch_size "), errors[0]
    for d in (tmp_path / "exps").glob("*/"):  # the batch case made a run: it says failed, with the reason
        s = runs.read_summary(str(d))
        assert s["status"] == "failed" and s["error"].startswith("out of CPU memory"), s
