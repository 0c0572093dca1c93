"""The clock of a run: the budget rule (stop when the next step would pass it), the schedule ending at the last step,
evals on training time (`--eval_every`, `--eval_freq auto`), the final eval sized to the run (training/final_eval.py),
and a stop signal during the final eval.

Rule tests drive a real `Clock` with a timer the test advances itself (each step takes exactly the seconds the
test says), so every decision is exact; the run tests train tiny models on the prepared `shakespeare-char`.
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
from lmsprint import rundir
from lmsprint.config import build_config
from lmsprint.errors import UserError
from lmsprint.training.clock import Clock
from lmsprint.training.distributed import World
from lmsprint.training.final_eval import FINAL_EVAL_SHARE, next_fits, plan_final_eval, prefix_grid


class Timer:
    """Seconds that pass only when the test says so."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def steps(clock: Clock, timer: Timer, seconds) -> list:
    """Run steps of the given durations while the clock allows; (tick, progress the step ran at) per step."""
    out = []
    for dt in seconds:
        if clock.done():
            break
        clock.begin_step()
        p = clock.progress()
        timer.t += dt
        out.append((clock.end_step(), p))
    return out


def test_budget_stops_before_a_step_that_would_pass_it_and_the_schedule_ends_at_that_step():
    """Budget 10 s, steps of 1 s: 10 steps, training time exactly 10 s (not 11); the schedule's progress is the
    training time over the start of the last step (9 s) and exactly 1 at the last step, which is known before it
    runs; the first step, with no measured step time yet, runs at progress 0."""
    timer = Timer()
    c = Clock(10.0, 1000, World(), log_every=100, timer=timer)
    c.start()
    ran = steps(c, timer, [1.0] * 20)
    assert len(ran) == 10 and c.train_time == 10.0 and c.done()
    assert [t.last for t, _ in ran] == [False] * 9 + [True]
    assert [p for _, p in ran] == [0.0] + [k / 9 for k in range(1, 9)] + [1.0]
    assert ran[-1][0].log  # the last (partial) interval is logged


def test_budget_is_passed_by_less_than_the_step_that_passed_it():
    """Budget 10.5 s: after nine 1 s steps, a tenth fits (9 + 1 <= 10.5) and is the last (no eleventh would fit);
    it takes 3 s: the run ends 1.5 s over, less than that step. Budget 10.4 s with steps that slow down: the run stops
    as soon as the measured mean step no longer fits."""
    timer = Timer()
    c = Clock(10.5, 1000, World(), timer=timer)
    c.start()
    ran = steps(c, timer, [1.0] * 9 + [3.0, 1.0])
    assert len(ran) == 10 and ran[-1][0].last and ran[-1][1] == 1.0
    assert 0 < c.train_time - 10.5 < 3.0
    timer = Timer()
    c = Clock(10.4, 1000, World(), timer=timer)
    c.start()
    ran = steps(c, timer, [1.0, 1.0, 1.0, 3.0, 3.0, 3.0])
    # after 4 steps: 6 s, mean 1.5 s -> 7.5 fits; after 5: 9 s, mean 1.8 s -> 10.8 > 10.4: stop at 9 s
    assert len(ran) == 5 and c.train_time == 9.0 and c.done() and ran[-1][0].last


def test_the_step_estimate_follows_the_machine_s_speed():
    """Three 3 s steps (a busy machine), then 1 s steps: the estimate is the last log interval's mean step, not the
    run's mean (1.46 s by then), so the run uses its budget of 20 s to the second instead of stopping at 19 s."""
    timer = Timer()
    c = Clock(20.0, 1000, World(), log_every=1, timer=timer)
    c.start()
    ran = steps(c, timer, [3.0] * 3 + [1.0] * 20)
    assert c.train_time == 20.0 and len(ran) == 14 and ran[-1][0].last and c.step_estimate() == 1.0


def test_a_step_that_slows_the_estimate_is_the_last_one_and_says_so():
    """Budget 10 s, a log row every step: five 1 s steps, then one of 4 s (9 s in all). The estimate it leaves, 4 s,
    says no step fits, so that step is the last: its tick says so (the loop checkpoints the last step and the clock
    is `finished` for a resume), and the clock is done exactly when a tick said `last`."""
    timer = Timer()
    c = Clock(10.0, 1000, World(), log_every=1, timer=timer)
    c.start()
    ran = steps(c, timer, [1.0] * 5 + [4.0] + [1.0] * 5)
    assert len(ran) == 6 and c.train_time == 9.0 and c.done()
    assert [t.last for t, _ in ran] == [False] * 5 + [True] and c.finished
    timer = Timer()  # the same with a log row every 3 steps and an eval on training time: last is never missed
    c = Clock(10.0, 1000, World(), log_every=3, eval_seconds=2.0, timer=timer)
    c.start()
    for dt in [1.0, 1.0, 1.0, 0.5, 0.5, 3.0, 1.0, 1.0, 1.0]:
        c.begin_step()
        timer.t += dt
        tick = c.end_step()
        assert tick.last == c.done(), (tick, c.train_time)
        if tick.last:
            break
    assert c.finished


def test_iterations_still_end_a_budgeted_run_and_an_unbudgeted_schedule_runs_on_steps():
    timer = Timer()
    c = Clock(100.0, 4, World(), timer=timer)
    c.start()
    ran = steps(c, timer, [1.0] * 10)
    assert len(ran) == 4 and ran[-1][0].last and c.train_time == 4.0
    timer = Timer()
    c = Clock(None, 4, World(), timer=timer)
    c.start()
    ran = steps(c, timer, [1.0] * 10)
    assert [p for _, p in ran] == [0.0, 0.25, 0.5, 0.75] and ran[-1][0].last


def test_evals_on_training_time_fire_at_the_first_step_of_each_new_period():
    """--eval_every 2.5s with 1 s steps: evals after steps 3 (3 s), 5 (5 s), 8 (8 s), 10 (10 s); a step-based cadence
    is untouched; a clock restored from a checkpoint continues the same periods."""
    timer = Timer()
    c = Clock(None, 10, World(), log_every=100, eval_seconds=2.5, timer=timer)
    c.start()
    ran = steps(c, timer, [1.0] * 10)
    assert [t.step for t, _ in ran if t.eval] == [3, 5, 8, 10]
    timer = Timer()
    c = Clock(None, 10, World(), log_every=100, eval_seconds=2.5, timer=timer)
    c.start()
    steps(c, timer, [1.0] * 4)
    d = Clock(None, 10, World(), log_every=100, eval_seconds=2.5, timer=timer)
    d.load_state_dict(c.state_dict())
    d.start()
    assert [t.step for t, _ in steps(d, timer, [1.0] * 10) if t.eval] == [5, 8, 10]


def test_auto_cadence_is_about_ten_evals_and_the_flags_agree():
    """eval_freq auto: a tenth of the budget in training time, else llm-baselines' 200 steps; --eval_every wins over
    auto; both set explicitly is refused in one line."""
    assert build_config({"time_budget": "60s"}).eval_cadence == (0, 6.0)
    assert build_config({"iterations": 25000}).eval_cadence == (200, 0.0)
    assert build_config({"eval_every": "30s", "time_budget": "5m"}).eval_cadence == (0, 30.0)
    assert build_config({"eval_freq": 40, "time_budget": "5m"}).eval_cadence == (40, 0.0)
    with pytest.raises(UserError, match="give one of them"):
        build_config({"eval_freq": 40, "eval_every": "30s"})
    with pytest.raises(UserError, match="'auto' or a positive integer"):
        build_config({"eval_freq": "often"})


def test_a_finished_clock_stays_finished_unless_its_budget_or_iterations_change():
    timer = Timer()
    c = Clock(3.0, 1000, World(), timer=timer)
    c.start()
    steps(c, timer, [1.0] * 5)
    saved = c.state_dict()
    assert c.finished and saved["finished"] == [3.0, 1000]
    same = Clock(3.0, 1000, World())
    same.load_state_dict(saved)
    assert same.done()
    longer = Clock(6.0, 1000, World())  # a resume that extends the budget trains on
    longer.load_state_dict(saved)
    assert not longer.done()


# ---------------------------------------------------------------------------------------------------- final eval


def test_tokens_are_counted_step_by_step_at_each_steps_own_batch(tmp_path):
    """The clock counts training tokens per step, so a resume with another global batch keeps the earlier steps'
    tokens; a checkpoint of an older lmsprint (no `tokens`) counts its steps at the batch now; a malformed count is
    refused naming the clock."""
    from lmsprint.errors import RunFileError
    from lmsprint.training import state

    timer = Timer()
    c = Clock(None, 10, World(), timer=timer)
    c.tokens_per_step = 64
    c.start()
    steps(c, timer, [1.0] * 3)
    c.tokens_per_step = 32  # another global batch from step 3 on
    steps(c, timer, [1.0] * 2)
    assert (c.step, c.tokens) == (5, 3 * 64 + 2 * 32)
    saved = c.state_dict()
    d = Clock(None, 10, World())
    d.tokens_per_step = 32
    d.load_state_dict(saved)
    assert d.tokens == 256 and d.state_dict()["tokens"] == 256
    older = Clock(None, 10, World())
    older.tokens_per_step = 32
    older.load_state_dict({k: v for k, v in saved.items() if k != "tokens"})
    assert older.tokens == 5 * 32
    ok = {"model": {}, "step": 5, "clock": saved}
    assert state.check_checkpoint(ok, str(tmp_path / "latest.pt")) is ok
    for bad in (-1, 1.5, "256", True):
        with pytest.raises(RunFileError, match="field 'clock'"):
            state.check_checkpoint({**ok, "clock": {**saved, "tokens": bad}}, str(tmp_path / "latest.pt"))


def test_the_clock_owns_the_checkpoint_cadence_and_the_timings_outside_the_budget():
    """--ckpt_interval is wall time since the start or the last checkpoint; a timed block (the eval-speed probe) and
    the seconds an eval block yields count in no total but their own."""
    timer = Timer()
    c = Clock(60.0, 100, World(), timer=timer)
    c.checkpoint_every = 30.0
    c.start()
    steps(c, timer, [10.0, 10.0])
    assert not c.checkpoint_due()
    steps(c, timer, [10.0])
    assert c.checkpoint_due()
    c.checkpointed()
    assert not c.checkpoint_due()

    def probe():
        timer.t += 2.5

    assert c.time_block(probe) == 2.5 and (c.train_time, c.eval_time) == (30.0, 0.0)
    with c.evaluating() as seconds:
        timer.t += 4.0
        assert seconds() == 4.0
    assert (c.train_time, c.eval_time) == (30.0, 4.0)


def test_final_eval_prefixes_and_plans():
    """Nested prefixes double from the fixed set up to the full split; auto fits the largest prefix in 15% of the
    budget at the measured speed, never less than the fixed set; full and fixed ignore the time."""
    assert prefix_grid(4, 37) == [4, 8, 16, 32, 37] and prefix_grid(4, 4) == [4] and prefix_grid(8, 5) == [5]
    assert FINAL_EVAL_SHARE == 0.15
    p = plan_final_eval("auto", 100.0, 4, 37, windows_per_s=1.0)  # 15 s: 8 windows fit (8 s), 16 do not
    assert (p.grid, p.limit_s, p.windows, p.seconds) == ((4, 8, 16, 32, 37), 15.0, 8, 8.0)
    p = plan_final_eval("auto", 100.0, 4, 37, windows_per_s=0.1)  # even the fixed set takes 40 s: it is still run
    assert (p.windows, p.seconds) == (4, 40.0)
    assert plan_final_eval("auto", 100.0, 4, 37, windows_per_s=10.0).windows == 37
    assert plan_final_eval("auto", None, 4, 37).windows == 37 and plan_final_eval("auto", None, 4, 37).limit_s is None
    full = plan_final_eval("full", 100.0, 4, 37, windows_per_s=0.1)
    assert (full.grid, full.limit_s, full.windows) == ((4, 8, 16, 32, 37), None, 37)
    assert plan_final_eval("fixed", 100.0, 4, 37).grid == (4,) and plan_final_eval("none", 100.0, 4, 37).grid == ()
    # while it runs: 4 windows took 6 s (1.5 s each); up to 8 -> 12 s <= 15; from 8 after 12 s, up to 16 -> 24 > 15
    assert next_fits(4, 6.0, 8, 15.0) and not next_fits(8, 12.0, 16, 15.0)
    assert next_fits(0, 0.0, 4, 15.0) and next_fits(8, 100.0, 16, None)


# ---------------------------------------------------------------------------------------------------- runs


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "lmsprint", *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data(char_data):
    return char_data


def flags(data, base, name, *extra):
    return ["train", "--dataset", data, "--results_base_folder", base, "--exp_name", name, "--device", "cpu",
            "--n_layer", 1, "--n_embd", 32, "--n_head", 2, "--vocab_size", 128, "--sequence_length", 32,
            "--batch_size", 4, "--acc_steps", 1, "--eval_tokens", 256, "--sample_tokens", 0, "--progress", "false",
            "--log_interval", 1, *extra]


def rows(run_dir):
    with open(rundir.metrics_path(run_dir)) as fh:
        return [json.loads(line) for line in fh]


def read_summary(run_dir):
    with open(rundir.summary_path(run_dir)) as fh:
        return json.load(fh)


@pytest.mark.slow
def test_a_budgeted_run_evaluates_on_its_clock_stays_within_a_step_and_records_its_final_prefixes(data, tmp_path):
    base = tmp_path / "exps"
    p = cli(*flags(data, base, "tb", "--time_budget", "3s", "--iterations", 100000), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = str(base / "tb")
    s, r = read_summary(run_dir), rows(run_dir)
    times = [0.0] + [x[K.TRAIN_TIME] for x in r if K.TRAIN_LOSS in x]  # every step is logged
    longest = max(b - a for a, b in zip(times, times[1:]))
    assert s[K.TRAIN_TIME] <= 3.0 + longest  # never more than one step over the budget
    evals = [x for x in r if K.VAL_LOSS in x and not any(k.startswith(K.FINAL) for k in x)]
    assert len(evals) >= 1 and evals[0]["iter"] < s["iterations_done"]  # at least one eval before the end
    assert "every 0.3s of training time on 256 val tokens" in p.stdout
    prefixes = s[K.FINAL_PREFIXES]
    seq = 32
    grid = [int(k) for k in prefixes]
    assert grid[0] == 256 and all(b == 2 * a for a, b in zip(grid, grid[1:-1]))  # nested, doubling
    assert s[K.FINAL][K.EVAL_TOKENS] == grid[-1] == s[K.VAL_SETS]["final"]["tokens"]
    assert grid[-1] % seq == 0 and prefixes[str(grid[-1])][K.VAL_LOSS] == s[K.FINAL][K.VAL_LOSS]

    # `lmsprint eval` scores the final eval's last prefix as the final eval did: each batch's loss sum is a float32
    # sum of at most 4 x 32 = 128 token losses, so grouping the windows into other batches moves the mean by at most
    # 128 float32 epsilons (relative)
    n = grid[-1]
    e = cli("eval", run_dir, "--eval_tokens", n, "--device", "cpu", cwd=tmp_path)
    assert e.returncode == 0, e.stderr[-2000:]
    assert f"eval: {n:,} val tokens in {n // 128} batch" in e.stdout
    with open(os.path.join(run_dir, "eval.json")) as fh:
        assert json.load(fh)[K.VAL_LOSS] == pytest.approx(prefixes[str(n)][K.VAL_LOSS], rel=128 * 1.2e-7)
    # and shows its progress in a log as the final eval does: a line at each quarter
    e = cli("eval", run_dir, "--eval_tokens", 1024, "--device", "cpu", cwd=tmp_path)
    assert e.returncode == 0 and "eval: 1,024 val tokens in 8 batches" in e.stdout
    assert [line.split(" (")[0] for line in e.stdout.splitlines() if "/8 batches" in line] == [
        "eval: 2/8 batches", "eval: 4/8 batches", "eval: 6/8 batches"]


@pytest.mark.slow
def test_sigterm_during_the_final_eval_stops_it_and_a_resume_completes_the_run(data, tmp_path):
    """The final eval over the full split in batches of one window: SIGTERM after its first prefix stops it within
    a batch: exit 143, one line, summary `interrupted`; the resume runs no step, only the final eval, and completes."""
    base = tmp_path / "exps"
    run_dir = str(base / "term")
    proc = subprocess.Popen([sys.executable, "-m", "lmsprint", *map(str, flags(
        data, base, "term", "--iterations", 6, "--eval_freq", 3, "--final_eval", "full", "--batch_size", 1,
        "--eval_tokens", 32))], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("final eval: 32 val tokens"):  # the first prefix is scored: the eval is under way
            break
    else:
        pytest.fail(f"no final eval line; {proc.stderr.read()[-2000:]}")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    stopped_in = time.monotonic() - t0
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("lmsprint: stopped: SIGTERM at step 6")
    assert "final metrics" not in out and stopped_in < 60  # a batch of one window: far less on an idle machine
    s = read_summary(run_dir)
    assert s["status"] == "interrupted" and s["iterations_done"] == 6
    assert not any(k.startswith(K.FINAL) for x in rows(run_dir) for k in x)

    p = cli("train", "--resume", run_dir, "--results_base_folder", base, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    s = read_summary(run_dir)
    assert s["status"] == "complete" and s["iterations_done"] == 6
    full = s[K.VAL_SETS]["final"]
    assert full["covers"] == "full split" and s[K.FINAL][K.EVAL_TOKENS] == full["tokens"]
    assert sum(1 for x in rows(run_dir) if f"{K.FINAL}/{K.VAL_LOSS}" in x) == 1
