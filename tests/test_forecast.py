"""`lmsprint forecast`: the power-law fit against known and hand-computed values, the bootstrap interval's coverage
on synthetic data with known noise, p_best, the regime checks, arms from run directories, and every refusal as
one line with exit status 2."""

import json

import numpy as np
import pytest

from lmsprint import rundir
from lmsprint.track import forecast as F
from tiny import tiny_config


def law(x, E=1.5, A=1.0, alpha=0.5, x_ref=1600.0):
    return E + A * (np.asarray(x, dtype=float) / x_ref) ** (-alpha)


# ---------------------------------------------------------------------------------------------------- the fit


def test_fit_recovers_known_parameters_from_exact_data():
    x = np.repeat([200.0, 400.0, 800.0, 1600.0], 2)
    fit = F.fit_power_law(x, law(x))
    # exact data: least_squares (xtol/ftol 1e-12) lands on the parameters up to a few float64 roundings of the
    # 8 residuals; 1e-7 leaves room for the optimizer's stopping rule on a 3-parameter problem
    assert fit.E == pytest.approx(1.5, abs=1e-7)
    assert fit.A == pytest.approx(1.0, abs=1e-7)
    assert fit.alpha == pytest.approx(0.5, abs=1e-7)
    assert fit.x_ref == 1600.0 and fit.at_bound == ()
    assert fit(3200.0) == pytest.approx(1.5 + 2 ** -0.5, abs=1e-7)


def test_fit_through_three_points_matches_the_hand_computed_solution():
    # three budgets x, 2x, 4x: (y1 - y2) / (y2 - y3) = 2^alpha, so by hand:
    # alpha = log2((3.0 - 2.6) / (2.6 - 2.35)) = log2(1.6) = 0.678071905...,
    # A (at x_ref = 400) = (y2 - y3) / (2^alpha - 1) = 0.25 / 0.6 = 0.416666...,  E = y3 - A = 1.933333...
    fit = F.fit_power_law([100, 200, 400], [3.0, 2.6, 2.35])
    assert fit.alpha == pytest.approx(0.6780719051126377, abs=1e-8)
    assert fit.A == pytest.approx(0.25 / 0.6, abs=1e-8)
    assert fit.E == pytest.approx(2.35 - 0.25 / 0.6, abs=1e-8)
    # the forecast at 1600 = E + A * 4^-alpha = 1.93333 + 0.41667 / 2.56 = 2.0960937...
    assert fit(1600) == pytest.approx(2.35 - 0.25 / 0.6 + (0.25 / 0.6) / 1.6 ** 2, abs=1e-8)


def test_fit_reports_parameters_at_their_bounds():
    # a straight line in log-log (no floor): E sits at its lower bound 0
    x = np.array([100.0, 200.0, 400.0, 800.0])
    fit = F.fit_power_law(x, 3.0 * (x / 800) ** -0.2)
    assert "E=0" in fit.at_bound and fit.alpha == pytest.approx(0.2, abs=1e-6)
    # flat at the lowest value: the floor E is the lowest loss seen
    flat = F.fit_power_law(x, [2.5, 2.45, 2.45, 2.45])
    assert "E=min" in flat.at_bound or "alpha=max" in flat.at_bound


# ---------------------------------------------------------------------------------------------------- bootstrap


@pytest.mark.slow
def test_bootstrap_interval_covers_the_truth_about_as_often_as_it_says():
    """40 synthetic arms: L = 1.5 + (x/1600)^-0.5 at 200..1600, two seeds each with N(0, 0.01^2) noise, forecast at
    3200. The 80% interval must hold the true L(3200) in 65-98% of them: 40 replicates give a binomial sd of
    0.063 around 0.8, so below 0.65 (2.4 sd) the interval is too narrow; the rung jackknife and the low side
    reaching the straight log-log line make it conservative by design (37 of 40 here), but an interval that
    always covers (40 of 40) is too wide to rank."""
    rng = np.random.default_rng(0)
    rungs = np.repeat([200.0, 400.0, 800.0, 1600.0], 2)
    truth = float(law(3200))
    hits, widths = 0, []
    for r in range(40):
        y = law(rungs) + rng.normal(0, 0.01, len(rungs))
        f = F.forecast_arm("a", "iterations", rungs, y, [(0, 0), (1, 0)] * 4, 3200, n_draws=200, seed=r)
        assert f.status in ("ok", "widened")
        hits += f.low <= truth <= f.high
        widths.append(f.high - f.low)
    assert 0.65 <= hits / 40 <= 0.98
    # and the interval is informative: narrower than half the drop it forecasts from the largest rung (0.293)
    assert np.median(widths) < 0.5 * float(law(1600) - law(3200))


def test_p_best_sums_to_one_and_ranks_clearly_separated_arms():
    x = np.repeat([200.0, 400.0, 800.0, 1600.0], 2)
    noise = np.tile([0.004, -0.004], 4)
    arms = [F.forecast_arm(name, "iterations", x, law(x, E=e) + noise, [(0, 0), (1, 0)] * 4, 3200, n_draws=200)
            for name, e in (("good", 1.2), ("mid", 1.5), ("bad", 1.8))]
    F.p_best(arms)
    assert sum(a.p_best for a in arms) == pytest.approx(1.0, abs=1e-12)
    assert arms[0].p_best > 0.99 and arms[2].p_best == 0.0
    # two identical arms share the draws' wins about evenly, and the shares still sum to 1
    twins = [F.forecast_arm(n, "iterations", x, law(x) + noise, [(0, 0), (1, 0)] * 4, 3200, n_draws=200, seed=s)
             for n, s in (("a", 1), ("b", 2))]
    F.p_best(twins)
    assert sum(a.p_best for a in twins) == pytest.approx(1.0, abs=1e-12)
    assert 0.2 < twins[0].p_best < 0.8


def test_backtest_refits_without_the_largest_rung():
    x = np.repeat([200.0, 400.0, 800.0, 1600.0], 2)
    y = law(x) + np.tile([0.003, -0.003], 4)
    f = F.forecast_arm("a", "iterations", x, y, [(0, 0), (1, 0)] * 4, 3200, n_draws=100)
    by_hand = F.fit_power_law(x[:6], y[:6], x_ref=1600.0)
    # the same least-squares problem solved twice, each to curve_fit's default tolerance (xtol = ftol = 1.49e-8,
    # relative): predictions near y = 3 agree within a few times 3 x 1.49e-8, below 1e-7 (not bit for bit: BLAS
    # thread counts and start points change the last digits)
    assert f.backtest_error == pytest.approx(float(by_hand(1600.0)) - float(y[6:].mean()), abs=1e-7)
    assert abs(f.backtest_error) < 0.01 and f.status == "ok"


# ---------------------------------------------------------------------------------------------------- refusals


def test_refusals_say_what_to_run():
    x2 = np.repeat([400.0, 800.0], 2)
    f = F.forecast_arm("a", "iterations", x2, law(x2), [(0, 0), (1, 0)] * 2, 3200)
    assert f.status == "refused" and f.forecast is None and "run rungs at 1,600" in f.message
    x = np.array([200.0, 400.0, 800.0, 1600.0])
    f = F.forecast_arm("a", "iterations", x, law(x), [(0, 0)] * 4, 3200)
    assert f.status == "refused" and "--seeds 2" in f.message
    # steepening beyond the noise: slopes -0.05, -0.15, -0.35 per doubling
    xs = np.repeat(x, 2)
    ys = np.repeat(3.0 * np.exp(np.cumsum([0, -0.05, -0.15, -0.35])), 2) + np.tile([0.001, -0.001], 4)
    f = F.forecast_arm("a", "iterations", xs, ys, [(0, 0), (1, 0)] * 4, 3200)
    assert f.status == "refused" and "not yet in the power-law regime" in f.message
    assert f.message.endswith("add a rung at 3,200 (the target itself: no shorter rung can settle it)")
    # a plateau: nothing says when (or whether) it ends
    f = F.forecast_arm("a", "iterations", xs, np.repeat([2.6, 2.45, 2.45, 2.45], 2) + np.tile([.002, -.002], 4),
                       [(0, 0), (1, 0)] * 4, 3200)
    assert f.status == "refused" and "plateau" in f.message


def test_steepening_within_the_noise_widens_the_low_side():
    # slopes -0.100, -0.100, -0.115 per doubling, seeds +-0.02 apart: steeper at the end, but not beyond the noise
    x = np.repeat([200.0, 400.0, 800.0, 1600.0], 2)
    y = np.repeat(3.0 * np.exp(np.cumsum([0, -0.10, -0.10, -0.115])), 2)  # log-loss steps per doubling
    y = y + np.tile([0.02, -0.02], 4)
    f = F.forecast_arm("a", "iterations", x, y, [(0, 0), (1, 0)] * 4, 3200)
    assert f.status == "widened" and "falls faster with each doubling" in f.message
    assert "within the seed noise" in f.message
    R = F.Rungs.of(x, y)
    # the steepening continued one more doubling: slope -0.115 + (-0.015) from the last rung's mean
    continued = float(R.mean[-1] * np.exp(-0.13))
    assert F._steepening_continued(R, F.log_slopes(R.x, R.mean), 3200) == pytest.approx(continued, rel=1e-12)
    assert f.low <= continued < f.forecast


def test_a_fit_that_does_not_converge_is_refused(monkeypatch):
    x = np.repeat([200.0, 400.0, 800.0, 1600.0], 2)
    monkeypatch.setattr(F, "MAX_NFEV", 1)  # least_squares stops before converging: status 0
    assert F.fit_power_law(x, law(x) + np.tile([0.01, -0.01], 4)) is None
    f = F.forecast_arm("a", "iterations", x, law(x) + np.tile([0.01, -0.01], 4), [(0, 0), (1, 0)] * 4, 3200)
    assert f.status == "refused" and f.message == ("the power-law fit did not converge on the rungs 200, 400, 800, "
                                                   "1,600; add a rung at 3,200 (the target itself: no shorter rung "
                                                   "can settle it)")


def test_parse_target():
    assert F.parse_target("25000") == ("iterations", 25000.0)
    assert F.parse_target("2.5e4") == ("iterations", 25000.0)
    assert F.parse_target("25k") == ("iterations", 25000.0)
    assert F.parse_target("3h") == ("time", 10800.0)
    assert F.parse_target("1h30m") == ("time", 5400.0)
    for bad in ("", "abc", "0", "1.5", "-3"):
        with pytest.raises(F.UserError):
            F.parse_target(bad)


# ---------------------------------------------------------------------------------------------------- run folders


def write_run(base, name, value, iterations=None, time_budget=None, **flags):
    """A finished run directory as `lmsprint train` leaves it (config.yaml, summary.json), written with rundir."""
    values = {"exp_name": name, "results_base_folder": str(base), **flags}
    if iterations is not None:
        values["iterations"] = iterations
    if time_budget is not None:
        values["time_budget"] = time_budget
    cfg = tiny_config(**values)
    d = rundir.create_run_dir(cfg)
    rundir.write_config(d, cfg)
    rundir.write_summary(d, {"status": "complete", "final": {"val/loss": float(value), "val/bpb": float(value) * 1.4},
                             "iterations_done": iterations or 100, "time/train_s": (iterations or 100) / 50.0})
    return d


def ladder_dirs(tmp_path, E=1.5, rungs=(200, 400, 800, 1600), name="arm", **flags):
    base = tmp_path / name
    for it in rungs:
        for s, eps in ((0, 0.004), (1, -0.004)):
            write_run(base, f"it{it}_s{s}", float(law(it, E=E)) + eps, iterations=it, seed=s, **flags)
    return base


def test_cli_json_has_one_object_per_arm(in_process, tmp_path):
    a = ladder_dirs(tmp_path, E=1.5, name="base")
    b = ladder_dirs(tmp_path, E=1.3, name="better", lr=3e-3)
    r = in_process("forecast", a, b, "--at", "3200", "--json", "--no_plot")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["arm"] for o in out] == ["base", "better"]
    for o in out:
        assert {"arm", "forecast", "low", "high", "p_best", "rungs", "seeds", "backtest_error"} <= set(o)
        assert o["rungs"] == [200, 400, 800, 1600] and o["seeds"] == [0, 1]
        assert o["low"] <= o["forecast"] <= o["high"]
    assert out[0]["forecast"] == pytest.approx(float(law(3200)), abs=0.01)
    assert out[1]["p_best"] > 0.99 and sum(o["p_best"] for o in out) == pytest.approx(1.0)


def test_cli_table_and_plot(in_process, tmp_path):
    a = ladder_dirs(tmp_path, name="base")
    r = in_process("forecast", a, "--at", "3200", "--plot", tmp_path / "f.png")
    assert r.returncode == 0, r.stderr
    assert "forecast of val/loss at 3,200 iterations" in r.stdout and "base" in r.stdout
    assert (tmp_path / "f.png").stat().st_size > 10000
    r = in_process("forecast", a, "--at", "3200", "--plot", tmp_path / "f.png")
    assert r.returncode == 2 and "never overwritten" in r.stderr


def one_line_error(r):
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmsprint: error: ") and r.stdout == ""
    return lines[0]


def test_cli_refusals_are_one_line_with_exit_2(in_process, tmp_path):
    two = ladder_dirs(tmp_path, rungs=(800, 1600), name="two")
    msg = one_line_error(in_process("forecast", two, "--at", "3200", "--no_plot"))
    assert "2 distinct budgets (800, 1,600): a forecast needs 3; run rungs at 3,200" in msg
    base = ladder_dirs(tmp_path, name="base")
    msg = one_line_error(in_process("forecast", base, "--at", "3h", "--no_plot"))
    assert "budgeted in iterations" in msg and "--at 25000" in msg and "steps/s these runs measured" in msg
    one = tmp_path / "one"
    for it in (200, 400, 800):
        write_run(one, f"it{it}", float(law(it)), iterations=it)
    msg = one_line_error(in_process("forecast", one, "--at", "3200", "--json"))
    assert "one seed per rung" in msg
    r = in_process("forecast", base, "--at", "3200", "--metric", "val/acc")
    assert "--metric val/acc: is not one of: val/loss" in one_line_error(r)


def test_an_arm_without_a_complete_run_is_one_line(in_process, tmp_path):
    """A ladder whose runs all failed (or still run): no budget to fit, one line saying so, never numpy's error."""
    base = tmp_path / "lad"
    for it in (200, 400, 800):
        d = write_run(base, f"it{it}_s0", 2.0, iterations=it)
        rundir.write_summary(d, {"status": "failed", "final": None})
    msg = one_line_error(in_process("forecast", base, "--at", "3200", "--no_plot"))
    assert "0 distinct budgets (no complete run): a forecast needs 3" in msg


def test_time_budgeted_runs_forecast_a_duration(in_process, tmp_path):
    base = tmp_path / "tb"
    for secs in (60, 120, 240, 480):
        for s, eps in ((0, 0.004), (1, -0.004)):
            write_run(base, f"tb{secs}_s{s}", float(law(secs, x_ref=480)) + eps, time_budget=f"{secs}s", seed=s)
    r = in_process("forecast", base, "--at", "16m", "--json", "--no_plot")
    assert r.returncode == 0, r.stderr
    (o,) = json.loads(r.stdout)
    assert o["budget_unit"] == "seconds" and o["rungs"] == [60.0, 120.0, 240.0, 480.0]
    assert o["forecast"] == pytest.approx(float(law(960, x_ref=480)), abs=0.01)
    msg = one_line_error(in_process("forecast", base, "--at", "3200", "--no_plot"))
    assert "budgeted in training time" in msg and "a duration, e.g. --at 3h" in msg


def test_arms_are_configs_differing_only_in_seed_and_budget(tmp_path):
    d = tmp_path / "mixed"
    for it in (200, 400, 800):
        for s in (0, 1):
            write_run(d, f"a_it{it}_s{s}", 2.0 + s * 0.01 - it / 1e4, iterations=it, seed=s, data_seed=7 + s)
            write_run(d, f"b_it{it}_s{s}", 1.9 + s * 0.01 - it / 1e4, iterations=it, seed=s, lr=3e-3)
    arms = F.load_arms([str(d)], "val/loss")
    assert sorted(len(a.runs) for a in arms) == [6, 6]
    assert sorted(a.label for a in arms) == ["a", "b"]  # the runs' --exp_name stem, less rung and seed
