"""Time to target (`train --target METRIC=VALUE`, `--stop_at_target`, training/target.py), eval rows that carry their
own times, and the val-set identity a run records (training/valsets.py).

The end-to-end runs are tiny CPU runs on a small local corpus with the char tokenizer: a reference run without a
target gives the eval losses; the target is put between its 2nd and 3rd eval, so the record must be step 30.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lmsprint import keys as K
from lmsprint.training.target import TargetTracker

ITERS = 120  # long enough after step 30 for a kill to land before the run ends


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def cli(*args, cwd, check=True):
    p = subprocess.run([sys.executable, "-m", "lmsprint", *map(str, args)], cwd=cwd, env=_env(), capture_output=True,
                       text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"lmsprint {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def flags(data, base, name, *extra):
    return ["train", "--dataset", data, "--tokenizer", "char", "--vocab_size", 64, "--results_base_folder", base,
            "--n_layer", 2, "--n_embd", 32, "--n_head", 4, "--sequence_length", 32, "--batch_size", 4,
            "--acc_steps", 1, "--iterations", ITERS, "--eval_freq", 10, "--log_interval", 3, "--eval_tokens", 512,
            "--final_eval", "fixed", "--sample_tokens", 0, "--ckpt_interval", "1h", "--progress", "false",
            "--device", "cpu", "--threads", 1, "--lr", 3e-3, "--exp_name", name, *extra]


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as fh:
        return json.load(fh)


def untimed(rows):
    """Rows without measured times (they differ between two runs of the same steps)."""
    timed = ("time/", "perf/", K.TARGET_TRAIN_TIME, K.TARGET_WALL_TIME)
    return [{k: v for k, v in r.items() if not k.startswith(timed)} for r in rows]


@pytest.fixture(scope="module")
def data(tmp_path_factory, corpus):
    d = tmp_path_factory.mktemp("target_data")
    cli("prepare", "--dataset", corpus, "--tokenizer", "char", "--data_dir", d, "--quiet", cwd=d)
    (prepared,) = [os.path.join(d, x) for x in os.listdir(d) if os.path.isfile(os.path.join(d, x, "manifest.json"))]
    return prepared


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run without a target, and a target between its 2nd and 3rd eval losses."""
    cwd = tmp_path_factory.mktemp("target_ref")
    cli(*flags(data, cwd / "exps", "ref"), cwd=cwd)
    evals = [r for r in metrics(cwd / "exps" / "ref") if K.VAL_LOSS in r]
    losses = [r[K.VAL_LOSS] for r in evals]
    assert [r[K.ITER] for r in evals] == list(range(10, ITERS + 1, 10)) and losses[2] < losses[1], losses  # it learns
    target = (losses[1] + losses[2]) / 2
    assert min(losses[:2]) > target  # no earlier eval reaches it
    return cwd / "exps" / "ref", f"{K.VAL_LOSS}={target!r}", evals


# ---------------------------------------------------------------------------------------------------- unit


def test_tracker_records_the_first_eval_reaching_the_target_in_the_metrics_direction():
    t = TargetTracker("val/loss=3.0")
    assert t.observe({K.VAL_LOSS: 3.2}, 10, 100, 1.0, 2.0) is None
    row = t.observe({K.VAL_LOSS: 3.0}, 20, 200, 2.0, 4.0)  # "at or below": equal reaches it
    assert row == {K.TARGET_STEP: 20, K.TARGET_TOKENS: 200, K.TARGET_TRAIN_TIME: 2.0, K.TARGET_WALL_TIME: 4.0,
                   K.TARGET_VALUE: 3.0}
    assert t.observe({K.VAL_LOSS: 2.5}, 30, 300, 3.0, 6.0) is None  # only the first
    assert t.summary() == {"metric": "val/loss", "value": 3.0, "reached": True, "stop_at_target": False, "step": 20,
                           "tokens": 200, "train_s": 2.0, "wall_s": 4.0, "eval": 2, "measured": 3.0}
    assert not t.stop()
    acc = TargetTracker("val/acc=0.4", stop=True)  # higher is better: at or above
    assert acc.observe({K.VAL_ACC: 0.39}, 10, 1, 0.1, 0.1) is None and not acc.stop()
    assert acc.observe({K.VAL_ACC: float("nan")}, 20, 2, 0.2, 0.2) is None
    assert acc.observe({K.VAL_ACC: 0.41}, 30, 3, 0.3, 0.3) and acc.stop()
    off = TargetTracker(None)
    assert off.observe({K.VAL_LOSS: 0.0}, 1, 1, 1, 1) is None and off.summary() is None and not off.stop()


def test_tracker_state_round_trip_and_replay_of_a_new_target_from_the_rows():
    t = TargetTracker("val/loss=3.0")
    t.observe({K.VAL_LOSS: 3.5}, 10, 100, 1.0, 1.5)
    t.observe({K.VAL_LOSS: 2.9}, 20, 200, 2.0, 3.5)
    u = TargetTracker("val/loss=3.0")
    u.history = lambda: pytest.fail("the checkpoint holds the record")
    u.load_state_dict(t.state_dict())
    assert u.summary() == t.summary() and u.n_evals == 2
    rows = [{K.ITER: 10, K.TRAIN_LOSS: 4.0, K.TRAIN_TIME: 0.9},
            {K.ITER: 10, K.VAL_LOSS: 3.5, K.TOKENS: 100, K.TRAIN_TIME: 1.0, K.WALL_TIME: 1.5},
            {K.ITER: 20, K.VAL_LOSS: 2.9, K.TOKENS: 200, K.TRAIN_TIME: 2.0, K.WALL_TIME: 3.5}]
    # a resume that adds a target (or changes it) finds it among the eval rows logged before the checkpoint
    v = TargetTracker("val/loss=3.2")
    v.history = lambda: rows
    v.load_state_dict({"spec": None, "n_evals": 2, "record": None})
    assert v.summary()["step"] == 20 and v.summary()["wall_s"] == 3.5 and v.summary()["eval"] == 2
    w = TargetTracker("val/loss=3.6")
    w.history = lambda: rows
    w.load_state_dict(None)  # a checkpoint of an older lmsprint
    assert w.summary()["step"] == 10 and w.n_evals == 2
    old = TargetTracker("val/loss=3.6")  # rows of an older lmsprint carry no times: unknown, never 0
    old.history = lambda: [{K.ITER: 10, K.VAL_LOSS: 3.5, K.TOKENS: 100}]
    old.load_state_dict(None)
    assert old.summary()["train_s"] is None and old.summary()["wall_s"] is None and old.summary()["step"] == 10


@pytest.mark.parametrize("spec, says", [
    ("val/los=3.2", "'val/los' is not a val metric; use one of val/loss, val/acc"),
    ("val/loss=nan", "not a finite number"),
    ("val/loss=inf", "not a finite number"),
    ("val/loss", "is not METRIC=VALUE"),
    ("val/loss=abc", "'abc' is not a number"),
    ("val/loss=3_28", "'3_28' is not a number"),  # Python's float() takes it (328.0): the flags' number rule does not
    ("val/loss=\uff13.\uff12\uff18", "is not a number"),  # full-width digits
    ("val/acc=1.5", "can never be reached"),
])
def test_a_bad_target_is_one_line(in_process, spec, says):
    r = in_process("train", "--target", spec, "--print_config")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert r.stderr.startswith("lmsprint: error: --target") and "Traceback" not in r.stderr


def test_stop_at_target_needs_a_target(in_process):
    r = in_process("train", "--stop_at_target", "--print_config")
    assert r.returncode == 2 and "needs --target" in r.stderr and r.stderr.count("\n") == 1


def test_target_is_bookkeeping_and_resume_safe_and_not_in_the_run_name(tiny):
    from lmsprint.config import flags_where, run_name_parts

    assert "target" in flags_where("resume_safe") and "target" in flags_where("bookkeeping")
    assert "stop_at_target" not in flags_where("resume_safe")  # it changes how long the run trains
    assert run_name_parts(tiny(target="val/loss=3")) == run_name_parts(tiny())


# ---------------------------------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_the_target_record_matches_the_eval_rows_and_every_eval_row_has_its_own_times(data, reference, tmp_path):
    ref_dir, target, evals = reference
    cli(*flags(data, tmp_path / "exps", "t", "--target", target), cwd=tmp_path)
    run = tmp_path / "exps" / "t"
    rows = metrics(run)
    # the same steps as the run without a target: the target only records
    assert untimed([r for r in rows if K.TARGET_STEP not in r]) == untimed(metrics(ref_dir))
    hit = [r for r in rows if K.TARGET_STEP in r]
    at = next(r for r in rows if r.get(K.ITER) == 30 and K.VAL_LOSS in r)
    assert len(hit) == 1 and hit[0][K.TARGET_STEP] == 30 and hit[0][K.TARGET_TOKENS] == 30 * 4 * 32 == at[K.TOKENS]
    assert hit[0][K.TARGET_TRAIN_TIME] == at[K.TRAIN_TIME] and hit[0][K.TARGET_WALL_TIME] == at[K.WALL_TIME]
    s = summary(run)
    assert s["target"]["reached"] and s["target"]["step"] == 30 and s["target"]["eval"] == 3
    assert s["target"]["train_s"] == at[K.TRAIN_TIME] and s["target"]["measured"] == at[K.VAL_LOSS]
    val_rows = [r for r in rows if K.VAL_LOSS in r]
    times = [r[K.TRAIN_TIME] for r in val_rows]
    walls = [r[K.WALL_TIME] for r in val_rows]
    assert times == sorted(times) and walls == sorted(walls) and all(w >= t for w, t in zip(walls, times))
    assert s[K.WALL_TIME] >= walls[-1] >= s[K.TRAIN_TIME] > 0
    # the val sets this run was scored on: the fixed 512 tokens (16 windows of 32), and as the final eval the same
    fixed, final = s["val_sets"]["fixed"], s["val_sets"]["final"]
    assert fixed["tokens"] == 512 and fixed["sequence_length"] == 32 and fixed["tokenizer"] == "char"
    manifest = json.load(open(os.path.join(data, "manifest.json")))
    assert fixed["val_sha256"] == manifest["sha256"]["val"] and final == fixed and fixed["covers"] == "fixed set"


@pytest.mark.slow
def test_stop_at_target_ends_the_run_complete_with_a_final_eval(data, reference, tmp_path):
    _ref, target, evals = reference
    cli(*flags(data, tmp_path / "exps", "s", "--target", target, "--stop_at_target", "--final_eval", "full"),
        cwd=tmp_path)
    s = summary(tmp_path / "exps" / "s")
    assert s["status"] == "complete" and s["iterations_done"] == 30 and s["target"]["step"] == 30
    assert s["target"]["stop_at_target"] and s["final"]["eval_tokens"] == s["val_sets"]["final"]["tokens"] > 512
    assert s["val_sets"]["final"]["covers"] == "full split"
    rows = metrics(tmp_path / "exps" / "s")
    assert max(r[K.ITER] for r in rows) == 30 and rows[-1]["final/val/loss"] == s["final"]["val/loss"]


def _train_until_killed(cmd, cwd, done):
    """Start `cmd`, SIGKILL it once `done()` holds; returns after the process is gone."""
    proc = subprocess.Popen([sys.executable, "-m", "lmsprint", *map(str, cmd)], cwd=cwd, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not done() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc


def _ckpt_step(run):
    """The step of the checkpoint in `run` (0 while there is none)."""
    import torch

    path = os.path.join(run, "checkpoints", "latest.pt")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")["step"]
    except Exception:  # missing, or being replaced at this moment
        return 0


@pytest.mark.slow
def test_the_record_survives_kill_9_and_resume_and_a_resume_may_add_the_target(data, reference, tmp_path):
    _ref, target, _evals = reference
    base = tmp_path / "exps"
    uninterrupted = tmp_path / "u"
    cli(*flags(data, uninterrupted, "u", "--target", target), cwd=tmp_path)
    want = untimed(metrics(uninterrupted / "u"))
    # killed after the checkpoint written at the eval that reached the target: the record comes from the checkpoint
    run = base / "k"
    _train_until_killed(flags(data, base, "k", "--target", target), tmp_path, lambda: _ckpt_step(run) >= 30)
    assert 30 <= _ckpt_step(run) < ITERS and summary(run)["status"] == "running"
    cli("train", "--resume", run, cwd=tmp_path)
    s = summary(run)
    assert s["status"] == "complete" and s["target"]["step"] == 30 and s["target"]["eval"] == 3
    assert untimed(metrics(run)) == want
    # killed before the target was reached, resumed with the target added: the resumed run records it
    run = base / "a"
    _train_until_killed(flags(data, base, "a"), tmp_path, lambda: _ckpt_step(run) >= 10)
    assert 10 <= _ckpt_step(run) < 30
    cli("train", "--resume", run, "--target", target, cwd=tmp_path)
    assert summary(run)["target"]["step"] == 30 and untimed(metrics(run)) == want
    # killed after it, resumed with the target added: found among the eval rows logged before the checkpoint
    run = base / "b"
    _train_until_killed(flags(data, base, "b"), tmp_path, lambda: _ckpt_step(run) >= 30)
    cli("train", "--resume", run, "--target", target, cwd=tmp_path)
    s = summary(run)
    assert s["target"]["step"] == 30 and s["target"]["eval"] == 3
    at = next(r for r in metrics(run) if r.get(K.ITER) == 30 and K.VAL_LOSS in r)
    assert s["target"]["train_s"] == at[K.TRAIN_TIME] and s["target"]["wall_s"] == at[K.WALL_TIME]
    assert not any(K.TARGET_STEP in r for r in metrics(run))  # reached before this process: no row of its own


def test_a_checkpoint_with_a_malformed_target_record_is_refused_naming_it(tmp_path):
    from lmsprint.errors import RunFileError
    from lmsprint.training import state

    t = TargetTracker("val/loss=3.0")
    t.observe({K.VAL_LOSS: 2.9}, 10, 100, 1.0, 2.0)
    clock = {"step": 10, "train_time": 1.0, "eval_time": 0.0, "compile_time": 0.0, "wall_time": 2.5}
    ok = {"model": {}, "step": 10, "clock": clock, "target": t.state_dict()}
    assert state.check_checkpoint(ok, str(tmp_path / "latest.pt")) is ok
    for bad in ({"spec": 3, "n_evals": 1, "record": None}, {"spec": None, "n_evals": -1, "record": None},
                {**t.state_dict(), "record": {**t.state_dict()["record"], "train_s": float("nan")}}):
        with pytest.raises(RunFileError, match="field 'target'"):
            state.check_checkpoint({**ok, "target": bad}, str(tmp_path / "latest.pt"))
    with pytest.raises(RunFileError, match="field 'clock'"):
        state.check_checkpoint({**ok, "clock": {**clock, "wall_time": -1.0}}, str(tmp_path / "latest.pt"))
