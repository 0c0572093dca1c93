"""FSDP2 on CPU with real torch.distributed (gloo) processes: sharded (DCP) checkpoints survive kill -9 and a
2-process run resumes on 2 (bit-identical) and on 1, a 1-process run resumes on 2, each with the global batch kept;
`lmsprint eval` reads the shards in one plain process; optimizers that cannot run on shards are refused in one line.

2 processes equal 1 process at the same global batch: both resumes that change the number of processes are
compared, row by row, with the uninterrupted 2-process run; the run started on 1 process logs steps 1-4 on one
process (then 5-8 on two), the run resumed on 1 process logs steps 5-8 on one, so every step of a 1-process run
is checked against the 2-process one. Runs start at most three processes at once (the machine may have 2 cores).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

import pytest
import torch
from distributed_runs import close, cmd, env, finish, kill_after_first_checkpoint, resume, rows, same_weights, start
from tiny import tiny_flags

from lmsprint.config import build_config
from lmsprint.errors import ConfigError, cli_message
from lmsprint.training.checks import check_run

# 8 optimizer steps of 2 micro-batches; eval (and so a checkpoint) at step 4 and 8; a log row every 2 steps
FLAGS = ["--config_format", "demo", *tiny_flags(vocab_size=50304, acc_steps=2), "--iterations", "8",
         "--time_budget", "0", "--log_interval", "2", "--eval_freq", "4", "--eval_tokens", "544",
         "--final_eval", "fixed", "--sample_tokens", "4", "--progress", "false", "--exp_name", "r", "--device", "cpu",
         "--data_parallel", "fsdp"]


def _flags(data, batch):
    return [*FLAGS, "--dataset", data, "--batch_size", batch]


@pytest.fixture(scope="module")
def runs(shakespeare_manifest, tmp_path_factory):
    """The uninterrupted 2-process reference ("two", global batch 2 x 2 x 2 = 8 sequences) and two runs killed (-9)
    right after their first checkpoint: "k2" on 2 processes and "k1" on 1 (batch 4 x 2)."""
    root = tmp_path_factory.mktemp("fsdp")
    data = shakespeare_manifest.dir
    two, k1 = start(2, _flags(data, 2), root / "two", root), start(1, _flags(data, 4), root / "k1", root)
    kill_after_first_checkpoint(k1, root / "k1" / "r")
    finish(two)
    kill_after_first_checkpoint(start(2, _flags(data, 2), root / "k2", root), root / "k2" / "r")
    return root


@pytest.mark.slow
def test_two_process_run_writes_one_sharded_checkpoint(runs):
    r2 = rows(runs / "two" / "r")
    losses = [r["train/loss"] for r in r2 if "train/loss" in r]
    assert len(losses) == 4 and losses[0] != losses[-1]
    ckpt = os.listdir(runs / "two" / "r" / "checkpoints")
    assert "latest.pt" in ckpt and len([n for n in ckpt if n.startswith("latest.shards-")]) == 1  # old ones removed
    with open(runs / "two" / "r" / "summary.json") as fh:
        assert json.load(fh)["world_size"] == 2


@pytest.mark.slow
def test_kill_9_resume_on_2_is_bit_identical_and_on_1_keeps_the_global_batch(runs, tmp_path):
    killed, on1 = runs / "k2", tmp_path / "on1"
    shutil.copytree(killed, on1, symlinks=True)
    p2 = resume(2, killed, runs, wait=False)
    err1 = resume(1, on1, runs)
    finish(p2)
    ref = runs / "two" / "r"
    assert rows(killed / "r") == rows(ref)  # bit-identical: every rank's RNG, accumulators and shards restored
    same_weights(killed / "r", ref)
    assert "batch_size x acc_steps 2 x 2 -> 2 x 4 per process" in err1 and "global batch stays 8 sequences" in err1
    close(rows(on1 / "r"), rows(ref))  # steps after the checkpoint on 1 process follow the 2-process run
    assert json.load(open(on1 / "r" / "summary.json"))["status"] == "complete"


@pytest.mark.slow
def test_one_process_run_resumes_on_two(runs):
    err = resume(2, runs / "k1", runs)
    assert "batch_size x acc_steps 4 x 2 -> 4 x 1 per process" in err
    close(rows(runs / "k1" / "r"), rows(runs / "two" / "r"))  # steps up to the checkpoint on 1 process


@pytest.mark.slow
def test_eval_reads_the_sharded_checkpoint_in_one_plain_process(runs):
    run_dir = runs / "two" / "r"
    os.remove(run_dir / "model.safetensors")  # only the DCP shards are left
    p = subprocess.run(cmd(1, "eval", run_dir, "--eval_tokens", 544, "--device", "cpu"), cwd=runs, env=env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    with open(run_dir / "eval.json") as fh:
        ev = json.load(fh)
    with open(run_dir / "summary.json") as fh:
        final = json.load(fh)["final"]
    # the same weights and windows, batched differently (2 ranks of alternating windows vs one process): each batch's
    # CE is a float32 sum, rounded at most once per level of its log2(tokens) deep reduction, plus the last sums
    # (measured: up to 7e-7 on a loss of 10.8 between batch sizes 1-17 of these 17 windows)
    tol = (math.log2(544) + 2) * torch.finfo(torch.float32).eps * abs(final["val/loss"])
    assert ev["step"] == 8 and abs(ev["val/loss"] - final["val/loss"]) <= tol


@pytest.mark.slow
def test_muon_is_refused_in_one_line_and_nothing_is_written(tmp_path):
    p = subprocess.run(cmd(1, "train", "--data_parallel", "fsdp", "--opt", "muon", "--config_format", "demo",
                           "--results_base_folder", tmp_path), cwd=tmp_path, env=env(), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("lmsprint: error: --opt muon cannot run under --data_parallel fsdp (")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("values, start_of_message", [
    ({"opt": "lamb"}, "--opt lamb cannot run under --data_parallel fsdp ("),
    ({"dtype": "float16"}, "--dtype float16 is not supported under --data_parallel fsdp ("),
])
def test_what_cannot_run_on_shards_is_refused(values, start_of_message):
    """The check the CLI runs before anything is written (the muon case above goes through the CLI)."""
    with pytest.raises(ConfigError) as e:
        check_run(build_config({"data_parallel": "fsdp", "device": "cpu", **values}))
    assert cli_message(e.value).startswith(start_of_message)
