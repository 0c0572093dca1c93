"""FSDP2 on CPU with real torch.distributed (gloo) processes: `--data_parallel fsdp` with 2 processes follows one
process at the same global batch; sharded (DCP) checkpoints survive kill -9 and resume on 2 processes
(bit-identical) and on 1 (and a 1-process run on 2) with the global batch kept; `lmsprint eval` reads the shards in
one plain process; optimizers that cannot run on shards are refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

TIMING = ("time/", "perf/")
FLAGS = ["--config_format", "demo", "--n_layer", "2", "--n_embd", "32", "--n_head", "4", "--sequence_length", "32",
         "--acc_steps", "2", "--iterations", "12", "--time_budget", "0", "--log_interval", "3", "--eval_freq", "4",
         "--eval_tokens", "544", "--final_eval", "fixed", "--sample_tokens", "4", "--progress", "false",
         "--ckpt_interval", "1s", "--exp_name", "r", "--device", "cpu", "--data_parallel", "fsdp"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _cmd(nproc: int, *args) -> list:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] \
        if nproc > 1 else [sys.executable]
    return [*launch, "-m", "lmsprint", *map(str, args)]


def _start(nproc, base, data, cwd, batch):
    return subprocess.Popen(_cmd(nproc, "train", *FLAGS, "--dataset", data, "--batch_size", batch,
                                 "--results_base_folder", base), cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(p):
    out, err = p.communicate(timeout=400)
    assert p.returncode == 0, err[-3000:]
    return err


def _kill_tree(pid: int) -> None:
    """SIGKILL a launcher and its workers (torchrun starts each worker in its own session)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = [int(k) for k in fh.read().split()]
    except OSError:
        kids = []
    for k in kids + [pid]:
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _killed_after_first_checkpoint(p, run_dir):
    ckpt = os.path.join(run_dir, "checkpoints", "latest.pt")
    deadline = time.time() + 300
    while not os.path.exists(ckpt) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # past the first checkpoint: the kill lands mid-interval
    _kill_tree(p.pid)
    p.wait()
    assert os.path.exists(ckpt), p.stderr.read()[-2000:]


def _resume(nproc, base, cwd):
    p = subprocess.run(_cmd(nproc, "train", "--resume", "latest", "--results_base_folder", base, "--device", "cpu"),
                       cwd=cwd, env=_env(), capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stderr


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        out = [json.loads(line) for line in fh]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in out]


def close(a, b, tol=2e-4):
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for ra, rb in zip(a, b):
        for k, va in ra.items():
            vb = rb[k]
            if isinstance(va, float):
                assert abs(va - vb) <= tol * max(1.0, abs(va)), (k, ra["iter"], va, vb)
            else:
                assert va == vb, (k, va, vb)


@pytest.fixture(scope="module")
def runs(shakespeare_manifest, tmp_path_factory):
    """Four runs at once: 2 and 1 processes uninterrupted, 2 and 1 processes killed (-9) after a checkpoint."""
    root = tmp_path_factory.mktemp("fsdp")
    data = shakespeare_manifest.dir
    ps = {"two": _start(2, root / "two", data, root, 2), "one": _start(1, root / "one", data, root, 4),
          "k2": _start(2, root / "k2", data, root, 2), "k1": _start(1, root / "k1", data, root, 4)}
    _killed_after_first_checkpoint(ps["k2"], root / "k2" / "r")
    _killed_after_first_checkpoint(ps["k1"], root / "k1" / "r")
    _finish(ps["two"]), _finish(ps["one"])
    return root


def test_two_processes_match_one_at_the_same_global_batch(runs):
    r2, r1 = rows(runs / "two" / "r"), rows(runs / "one" / "r")
    close(r2, r1)
    losses = [r["train/loss"] for r in r2 if "train/loss" in r]
    assert len(losses) == 4 and losses[0] != losses[-1]
    ckpt = os.listdir(runs / "two" / "r" / "checkpoints")
    assert "latest.pt" in ckpt and len([n for n in ckpt if n.startswith("latest.shards-")]) == 1  # old ones removed
    with open(runs / "two" / "r" / "summary.json") as fh:
        assert json.load(fh)["world_size"] == 2


def test_kill_9_resume_on_2_is_bit_identical_and_on_1_keeps_the_global_batch(runs, tmp_path):
    killed = runs / "k2"
    assert json.load(open(killed / "r" / "summary.json"))["status"] == "running"
    on1 = tmp_path / "on1"
    shutil.copytree(killed, on1, symlinks=True)
    p2 = subprocess.Popen(_cmd(2, "train", "--resume", "latest", "--results_base_folder", killed, "--device", "cpu"),
                          cwd=runs, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err1 = _resume(1, on1, runs)
    _finish(p2)
    ref = runs / "two" / "r"
    assert rows(killed / "r") == rows(ref)  # bit-identical: every rank's RNG, accumulators and shards restored
    w_ref, w = load_file(ref / "model.safetensors"), load_file(killed / "r" / "model.safetensors")
    assert w.keys() == w_ref.keys() and all((w[k] == w_ref[k]).all() for k in w)
    assert "batch_size x acc_steps 2 x 2 -> 2 x 4 per process" in err1 and "global batch stays 8 sequences" in err1
    close(rows(on1 / "r"), rows(ref))
    assert json.load(open(on1 / "r" / "summary.json"))["status"] == "complete"


def test_one_process_run_resumes_on_two(runs):
    err = _resume(2, runs / "k1", runs)
    assert "batch_size x acc_steps 4 x 2 -> 4 x 1 per process" in err
    close(rows(runs / "k1" / "r"), rows(runs / "one" / "r"))


def test_eval_reads_the_sharded_checkpoint_in_one_plain_process(runs):
    run_dir = runs / "two" / "r"
    os.remove(run_dir / "model.safetensors")  # only the DCP shards are left
    p = subprocess.run(_cmd(1, "eval", run_dir, "--eval_tokens", 544, "--device", "cpu"), cwd=runs, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    with open(run_dir / "eval.json") as fh:
        ev = json.load(fh)
    with open(run_dir / "summary.json") as fh:
        final = json.load(fh)["final"]
    assert ev["step"] == 12 and abs(ev["val/loss"] - final["val/loss"]) < 1e-5


@pytest.mark.parametrize("opt", ["muon", "lamb"])
def test_optimizers_that_need_whole_tensors_are_refused(opt, tmp_path):
    p = subprocess.run(_cmd(1, "train", "--data_parallel", "fsdp", "--opt", opt, "--config_format", "demo",
                            "--results_base_folder", tmp_path), cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(f"lmsprint: error: --opt {opt} cannot run under --data_parallel fsdp (")
    assert not os.listdir(tmp_path)
