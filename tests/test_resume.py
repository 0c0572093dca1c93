"""End to end on CPU with the real GPT-2 tokenizer on Shakespeare: `lmsprint train` -> kill -9 -> `--resume`
gives bit-identical metrics and weights to an uninterrupted run; then `lmsprint eval` and `lmsprint generate`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from lmsprint.keys import VAL_KEYS

TIMING = ("time/", "perf/")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def lmsprint(*args, cwd, check=True, timeout=300):
    p = subprocess.run([sys.executable, "-m", "lmsprint", *map(str, args)], cwd=cwd, env=_env(),
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"lmsprint {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def train_flags(data_dir, base):
    return ["train", "--config_format", "demo", "--dataset", data_dir, "--results_base_folder", base,
            "--n_layer", 2, "--n_embd", 32, "--n_head", 4, "--sequence_length", 32, "--batch_size", 4,
            "--acc_steps", 2, "--iterations", 40, "--time_budget", 0, "--eval_freq", 10, "--log_interval", 3,
            "--eval_tokens", 1024, "--final_eval", "fixed", "--sample_tokens", 8, "--dropout", 0.1,
            "--ckpt_interval", "1s", "--progress", "false", "--exp_name", "run"]


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        out = [json.loads(line) for line in fh]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in out]


def weights(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoints", "latest.pt"), weights_only=True)["model"]


def summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as fh:
        return json.load(fh)


def digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(shakespeare_manifest, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ref")
    p = lmsprint(*train_flags(shakespeare_manifest.dir, cwd / "exps"), cwd=cwd)
    return cwd / "exps" / "run", p


@pytest.mark.slow
def test_uninterrupted_run_writes_a_complete_run_dir(uninterrupted):
    run_dir, p = uninterrupted
    s = summary(run_dir)
    assert s["status"] == "complete" and s["iterations_done"] == 40 and s["tokens"] == 40 * 8 * 32
    assert set(s["final"]) == {*VAL_KEYS, "eval_tokens"} and {"val/loss", "val/bpb"} <= set(s["final"])
    assert s["final"]["eval_tokens"] == 1024 and 0 < s["final"]["val/bpb"] < s["final"]["val/loss"] * 2
    r = rows(run_dir)
    train_iters = [x["iter"] for x in r if "train/loss" in x]
    assert train_iters == list(range(3, 40, 3)) + [40]  # every log_interval, plus the last partial interval
    assert [x["iter"] for x in r if "val/loss" in x] == [10, 20, 30, 40]
    assert r[-1]["final/val/loss"] == s["final"]["val/loss"]
    train = [x for x in r if "train/loss" in x]
    assert r[-3] is train[-1] and "val/loss" in r[-2]  # the last step: its train row, its eval, the final eval
    assert train[0]["train/loss"] > train[-1]["train/loss"]  # it learns
    assert "final metrics:" in p.stdout and "val/loss" in p.stdout and "sample:" in p.stdout
    assert os.path.exists(os.path.join(run_dir, "samples.txt"))


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_identical_then_eval_and_generate(uninterrupted, shakespeare_manifest, tmp_path):
    ref_dir, _ = uninterrupted
    base = tmp_path / "exps"
    cmd = [sys.executable, "-m", "lmsprint", *map(str, train_flags(shakespeare_manifest.dir, base))]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = base / "run" / "checkpoints" / "latest.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let it run a little past the first checkpoint: the kill lands mid-interval
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = base / "run"
    assert ckpt.exists(), proc.stderr.read().decode()[-2000:]
    assert summary(run_dir)["status"] == "running"  # killed before the end: not a finished run

    lmsprint("train", "--resume", "latest", "--results_base_folder", base, "--device", "cpu", cwd=tmp_path)
    assert summary(run_dir)["status"] == "complete"
    assert rows(run_dir) == rows(ref_dir)
    w_ref, w = weights(ref_dir), weights(run_dir)
    assert w.keys() == w_ref.keys() and all(torch.equal(w[k], w_ref[k]) for k in w)
    with pytest.raises(AssertionError, match="already complete"):
        lmsprint("train", "--resume", run_dir, cwd=tmp_path)

    # eval re-computes the final fixed-set numbers from the checkpoint and touches nothing but eval.json
    before = {f: digest(run_dir / f) for f in ("metrics.jsonl", "summary.json", "config.yaml")}
    p = lmsprint("eval", run_dir, "--eval_tokens", 1024, "--device", "cpu", cwd=tmp_path)
    with open(run_dir / "eval.json") as fh:
        ev = json.load(fh)
    final = summary(run_dir)["final"]
    assert ev["step"] == 40 and ev["eval_tokens"] == 1024
    assert abs(ev["val/loss"] - final["val/loss"]) < 1e-6 and "val/bpb" in p.stdout
    assert before == {f: digest(run_dir / f) for f in before}

    gen = ["generate", "latest", "--results_base_folder", base, "--prompt", "ROMEO:", "--max_new_tokens", 12,
           "--seed", 3, "--num_samples", 2]
    a = lmsprint(*gen, cwd=tmp_path).stdout
    assert a.count("ROMEO:") == 2 and "--- sample 2 ---" in a


# ---------------------------------------------------------------------------------------------------- older checkpoints


def as_format_2(st: dict) -> dict:
    """A checkpoint as lmsprint wrote it before the run's components owned their states (format 2, its `capture` and
    `gather_states`): clock times and step at the top, the record and rank 0's accumulators in `metrics_state`,
    rank 0's RNG at the top as well, every rank's {rng, acc} in `ranks`, the sampler one step ahead (it had
    prefetched the next batch), and the config with the options of that version (`resume`, `micro_batch` '')."""
    clock, rec, every = st["clock"], st["record"], st["ranks"]
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in st["config"].items()}
    config["train"] = {**config["train"], "resume": None, "micro_batch": config["train"]["micro_batch"] or ""}
    return {"format": 2, "model": st["model"], "optimizer": st["optimizer"], "scaler": st.get("scaler"),
            "step": st["step"], "sampler": {"seed": st["sampler"]["seed"], "step": st["step"] + 1},
            "rng": every[0]["rng"], "train_time": clock["train_time"], "eval_time": clock["eval_time"],
            "compile_time": clock["compile_time"], "config": config, "data": st["data"],
            "metrics_state": {"rows": rec["rows"], "samples_bytes": rec["samples_bytes"], "n_evals": rec["n_evals"],
                              "last_val": rec["last_val"], "acc": every[0]["metrics"]},
            "ranks": [{"rng": r["rng"], "acc": r["metrics"]} for r in every],
            "world_size": st["world_size"], "global_batch": st["global_batch"]}


@pytest.mark.slow
def test_a_checkpoint_of_the_previous_format_resumes_bit_identically(shakespeare_manifest, tmp_path):
    """A run stopped at a checkpoint written in format 2 (its kept step_20.pt, rewritten as format 2 wrote it, and
    config.yaml as that version wrote it) resumes to exactly the uninterrupted run: every metrics row, every weight
    and optimizer tensor."""
    import yaml

    base = tmp_path / "exps"
    flags = [*train_flags(shakespeare_manifest.dir, base), "--save_checkpoint_freq", 20, "--ckpt_interval", "1h"]
    lmsprint(*flags, cwd=tmp_path)
    ref = base / "run"
    run_dir = base / "old"
    shutil.copytree(ref, run_dir)
    ckpts = run_dir / "checkpoints"
    old = as_format_2(torch.load(ckpts / "step_20.pt", weights_only=True))
    assert old["metrics_state"]["rows"] < len(rows(ref))
    torch.save(old, ckpts / "latest.pt")
    with open(run_dir / "config.yaml") as fh:
        cfg = yaml.safe_load(fh)
    cfg["train"].update(resume=None, micro_batch="")
    with open(run_dir / "config.yaml", "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    s = summary(run_dir)
    s["status"] = "interrupted"
    with open(run_dir / "summary.json", "w") as fh:
        json.dump(s, fh)

    lmsprint("train", "--resume", run_dir, "--device", "cpu", cwd=tmp_path)
    assert summary(run_dir)["status"] == "complete"
    assert rows(run_dir) == rows(ref)
    a, b = (torch.load(d / "checkpoints" / "latest.pt", weights_only=True) for d in (ref, run_dir))
    assert a["format"] == b["format"] == 3 and b["step"] == 40
    for key in ("model", "optimizer"):
        flat_a, flat_b = torch.utils._pytree.tree_flatten(a[key])[0], torch.utils._pytree.tree_flatten(b[key])[0]
        assert len(flat_a) == len(flat_b) and all(
            torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(flat_a, flat_b))
