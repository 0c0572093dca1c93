"""`lmsprint ladder`: the plan (rungs, seeds, names, branch steps), the schedule facts branching rests on (bit-equal
lr multipliers up to the branch step, --warmup_steps), a branched rung bit-identical to an independently trained
run of its length (tiny model, real text), and a ladder that continues after a real interruption without rerunning
what finished."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from lmsprint import rundir
from lmsprint.config import build_config, checkpoint_steps
from lmsprint.errors import ConfigError, UserError
from lmsprint.optim.schedules import lr_multiplier
from lmsprint.track import ladder as L
from lmsprint.training.checks import check_run
from tiny import tiny_flags

SPEEDRUN = {"model": "llama2", "opt": "muon", "scheduler": "wsd", "lr": 1e-2, "mlp": "relu2",
            "tie_embeddings": "false", "grad_clip": 1.0}


def flags(data_dir, results, **extra):
    """Tiny speedrun-recipe runs on Shakespeare characters, one thread, no periodic eval."""
    return tiny_flags(vocab_size=128, dataset="shakespeare-char", data_dir=data_dir, results_base_folder=results,
                      eval_freq=100000, eval_tokens=1024, final_eval="fixed", sample_tokens=0, progress="false",
                      quiet="true", threads=1, device="cpu", **{**SPEEDRUN, **extra})


# ---------------------------------------------------------------------------------------------------- schedules


def mult(cfg, step):
    n = cfg.train.iterations
    return lr_multiplier(step / n, cfg.optim, n)


def test_warmup_steps_gives_bit_equal_multipliers_up_to_the_branch_step():
    short = build_config({**SPEEDRUN, "iterations": 200, "warmup_steps": 10})
    long = build_config({**SPEEDRUN, "iterations": 1600, "warmup_steps": 10})
    c = L.branch_step(short, long)
    # the short run's decay starts after progress 0.8 = step 160: its step 161 is the first whose lr differs
    assert c == 161
    assert all(mult(short, s) == mult(long, s) for s in range(c))  # bit for bit, warmup included
    assert mult(short, c) < 1.0 == mult(long, c)
    assert [mult(short, s) for s in (0, 5, 10)] == [0.01, 0.01 + 0.99 * 0.5, 1.0]
    # the same warmup as a fraction of each run is a different number of steps: not equal
    rel_short = build_config({**SPEEDRUN, "iterations": 200, "warmup_percent": 0.05})
    rel_long = build_config({**SPEEDRUN, "iterations": 1600, "warmup_percent": 0.05})
    assert L.branch_step(rel_short, rel_long) == 1


def test_warmup_steps_needs_an_iteration_budget_and_room():
    with pytest.raises(ConfigError, match="needs a budget in steps"):
        check_run(build_config({"scheduler": "wsd", "warmup_steps": 10, "time_budget": "5m"}))
    with pytest.raises(ConfigError, match="does not fit in 100"):
        check_run(build_config({"scheduler": "wsd", "warmup_steps": 90, "iterations": 100}))
    cos = build_config({"scheduler": "cos", "warmup_steps": 10, "iterations": 100})
    pct = build_config({"scheduler": "cos", "warmup_percent": 0.1, "iterations": 100})
    assert all(mult(cos, s) == mult(pct, s) for s in range(101))  # cos: the same as warmup_percent 10/100


def test_save_checkpoint_steps_option():
    assert checkpoint_steps(build_config({"save_checkpoint_steps": "161, 321,641"}).train) == {161, 321, 641}
    assert checkpoint_steps(build_config({}).train) == frozenset()
    for bad in ("a,b", "0", "1;2"):
        with pytest.raises(ConfigError, match="save_checkpoint_steps"):
            build_config({"save_checkpoint_steps": bad})


# ---------------------------------------------------------------------------------------------------- the plan


def test_parse_rungs_and_seeds():
    assert [str(f) for f in L.parse_rungs("1/8, 1/16,0.25,1/4")] == ["1/16", "1/8", "1/4"]
    assert L.parse_seed_list("2") == [0, 1] and L.parse_seed_list("0,3,7") == [0, 3, 7]
    for bad in ("", "0", "2/1", "x", "-1/4"):
        with pytest.raises(UserError):
            L.parse_rungs(bad)
    for bad in ("0", "a", "-1,2"):
        with pytest.raises(UserError):
            L.parse_seed_list(bad)


def test_dry_run_shows_the_branched_plan(in_process, tmp_path):
    r = in_process("ladder", "--at", "3200", "--rungs", "1/16,1/8,1/4,1/2", "--seeds", "2", "--dry_run", "--",
                   *flags(tmp_path / "data", tmp_path / "exps"))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "4 rungs of 3,200 (1/16 = 200, 1/8 = 400, 1/4 = 800, 1/2 = 1,600) x 2 seeds" in out
    assert "warmup 10 steps in every rung" in out and "1,877 steps per seed instead of 3,000" in out
    assert "it200_s0: will branch from it1600_s0 at step 161 and run its cool-down to 200" in out
    assert "--iterations 1600 --warmup_steps 10 --save_checkpoint_steps 161,321,641" in out
    assert "lmsprint train ... --iterations 3200 --warmup_steps 10" in out
    assert not os.path.exists(tmp_path / "exps")  # a dry run writes nothing
    # cos: every rung trained on its own, its warmup a fraction of itself
    r = in_process("ladder", "--at", "800", "--rungs", "1/4,1/2", "--seeds", "1", "--dry_run", "--",
                   *flags(tmp_path / "data", tmp_path / "exps", scheduler="cos"))
    assert r.returncode == 0 and "will branch" not in r.stdout and "--iterations 200" in r.stdout


@pytest.mark.parametrize("extra,expect", [
    (["--seed", "3"], "--seed cannot be passed to a ladder's runs: use --seeds N"),
    (["--iterations", "50"], "--iterations cannot be passed to a ladder's runs"),
    (["--save_checkpoint_steps", "5"], "--save_checkpoint_steps cannot be passed"),
    (["--muon_momentum_warmup", "0.1"], "--muon_momentum_warmup 0.1 is a fraction of each run"),
])
def test_refused_train_flags_are_one_line(in_process, tmp_path, extra, expect):
    r = in_process("ladder", "--at", "400", "--dry_run", "--", *flags(tmp_path / "d", tmp_path / "e"), *extra)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and expect in r.stderr, r.stderr


def test_refused_ladder_arguments(in_process, tmp_path):
    f = flags(tmp_path / "d", tmp_path / "e")
    for args, expect in ((["--at", "3x"], "neither a number of iterations"),
                         (["--at", "10", "--rungs", "1/16,1/8"], "are the same number of iterations"),
                         (["--at", "400", "--parallel", "0"], "--parallel 0"),
                         (["--at", "400", "--name", "a/b"], "plain folder name")):
        r = in_process("ladder", *args, "--dry_run", "--", *f)
        assert r.returncode == 2 and expect in r.stderr, (args, r.stderr)


@pytest.mark.parametrize("name", [".", "..", "", "a/b", "latest"])
def test_a_name_that_is_no_plain_folder_name_is_refused(in_process, tmp_path, name):
    """The ladder's --name is checked by the sweep's own rule: `.` or `..` would put ladder.json and the rungs in
    the results folder itself or its parent."""
    base = tmp_path / "e" / "inner"
    base.mkdir(parents=True)
    r = in_process("ladder", "--at", "400", "--rungs", "1/4,1/2", "--seeds", "1", "--name", name, "--",
                   *flags(tmp_path / "d", base))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"--name '{name}' must be a plain folder name" in r.stderr, r.stderr
    assert not list(tmp_path.rglob(L.LADDER_FILE)) and not os.listdir(base)  # nothing written anywhere


def test_a_folder_made_for_another_plan_is_refused(in_process, tmp_path):
    f = flags(tmp_path / "d", tmp_path / "e")
    values = {f[i].lstrip("-"): f[i + 1] for i in range(0, len(f), 2)}
    plan = L.plan_ladder("400", "1/4,1/2", "2", values, None, "lad")
    L.write_record(plan, f)
    r = in_process("ladder", "--at", "400", "--rungs", "1/4,1/2", "--seeds", "3", "--name", "lad", "--", *f)
    assert r.returncode == 2 and "was made for another plan (seeds differ)" in r.stderr, r.stderr
    r = in_process("ladder", "--at", "400", "--rungs", "1/4,1/2", "--seeds", "2", "--name", "lad", "--", *f,
                   "--lr", "0.02")
    assert r.returncode == 2 and "(train_values differ)" in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path / "e" / "lad")) == ["ladder.json"]  # nothing was trained


# ---------------------------------------------------------------------------------------------------- real runs


def weights(run_dir):
    return load_file(rundir.weights_path(run_dir))


def train_rows(run_dir):
    """metrics.jsonl rows without the wall-clock fields (time, throughput, MFU)."""
    drop = ("time/", "perf/")
    return [{k: v for k, v in r.items() if not k.startswith(drop)} for r in rundir.read_metrics(run_dir)]


@pytest.mark.slow
def test_branched_rung_equals_an_independent_run_bit_for_bit(in_process, tmp_path):
    """The ladder's 32-step rung, branched from the 64-step stable run at step 26, against a 32-step run trained on
    its own with the same warmup (2 steps = 5% of the shortest rung): on CPU in float32 every step does the same
    operations on the same numbers, so the final weights, every logged loss and the final val loss are
    bit-identical (no tolerance)."""
    data, exps = tmp_path / "data", tmp_path / "exps"
    r = in_process("ladder", "--at", "64", "--rungs", "1/2,1", "--seeds", "1", "--name", "lad", "--",
                   *flags(data, exps, log_interval=2))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "it32_s0: branched from" in r.stdout and "at step 26" in r.stdout
    record = json.loads((exps / "lad" / L.LADDER_FILE).read_text())
    assert record["warmup_steps"] == 2 and record["runs"][0]["branch_step"] == 26
    rung = str(exps / "lad" / "it32_s0")
    # the stable run kept its checkpoint at the branch step; the fork's config is the rung's own
    assert os.path.isfile(rundir.checkpoint_path(str(exps / "lad" / "it64_s0"), "step_26.pt"))
    assert rundir.read_config(rung).train.iterations == 32 and rundir.status(rung) == "complete"

    r = in_process("train", *flags(data, tmp_path / "solo", log_interval=2), "--iterations", "32",
                   "--warmup_steps", "2", "--seed", "0", "--exp_name", "solo")
    assert r.returncode == 0, r.stderr
    solo = str(tmp_path / "solo" / "solo")
    a, b = weights(rung), weights(solo)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert train_rows(rung) == train_rows(solo)
    assert rundir.read_summary(rung)["final"]["val/loss"] == rundir.read_summary(solo)["final"]["val/loss"]
    # and the stable run is not the rung: its lr never decayed before step 52
    stable = weights(str(exps / "lad" / "it64_s0"))
    assert not all(stable[k].equal(a[k]) for k in a)
    # the folder forecasts (two rungs: refused, saying what to run)
    r = in_process("forecast", exps / "lad", "--at", "64", "--no_plot")
    assert r.returncode == 2 and "2 distinct budgets (32, 64)" in r.stderr


def _child_running(pid: int, name: str) -> bool:
    """Whether process `pid` has a child whose command line holds `name` (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = fh.read().split()
    except OSError:
        return False
    for kid in kids:
        try:
            with open(f"/proc/{kid}/cmdline", "rb") as fh:
                if name.encode() in fh.read():
                    return True
        except OSError:
            pass
    return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the ladder's training process in /proc")
def test_interrupted_ladder_continues_and_reruns_nothing_finished(tmp_path):
    """A real Ctrl-C (SIGINT to the ladder's process group) while the second fork's training process runs; the same
    command again finishes the ladder, skipping every run that was complete, and the interrupted fork continues from
    its checkpoint rather than starting over. The signal is sent as soon as that process is seen in /proc (not after
    reading the ladder's output, which a loaded machine may deliver after the fork has already finished)."""
    data, exps = tmp_path / "data", tmp_path / "exps"
    cmd = [sys.executable, "-m", "lmsprint", "ladder", "--at", "64", "--rungs", "1/4,1/2,1", "--seeds", "1",
           "--name", "lad", "--", *flags(data, exps)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "ladder.out"
    with open(out, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and not _child_running(proc.pid, "it32_s0"):
            time.sleep(0.02)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=300)
    seen, rest = [], out.read_text()
    rest = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, "".join(seen) + rest
    folder = exps / "lad"
    done = {n: rundir.status(str(folder / n)) for n in ("it16_s0", "it32_s0", "it64_s0")}
    assert done["it64_s0"] == "complete" and done["it16_s0"] == "complete" and done["it32_s0"] != "complete", done
    stamps = {n: os.path.getmtime(rundir.summary_path(str(folder / n))) for n in ("it16_s0", "it64_s0")}

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "it16_s0: complete in" in again.stdout and "it64_s0: complete in" in again.stdout
    assert again.stdout.count(", skipped") == 2
    assert f"it32_s0: continuing {folder / 'it32_s0'}" in again.stdout  # not branched again, not restarted
    assert all(os.path.getmtime(rundir.summary_path(str(folder / n))) == t for n, t in stamps.items())
    assert sorted(os.listdir(folder)) == sorted(["it16_s0", "it32_s0", "it64_s0", "ladder.json", "latest"])
    assert all(rundir.status(str(folder / n)) == "complete" for n in done)
    assert rundir.read_config(str(folder / "it32_s0")).train.iterations == 32
