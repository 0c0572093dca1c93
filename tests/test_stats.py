"""compare's statistics (track/stats.py) against hand-computed values and against scipy's own results.

"Hand-computed": the t statistics, degrees of freedom and intervals are written out from their textbook formulas
here, and the Student-t tail probabilities come from the regularized incomplete beta function
(scipy.special.betainc: P(|T| > t) = I_{df/(df+t^2)}(df/2, 1/2)), not from scipy.stats, so a wrong call into
scipy.stats (a wrong `equal_var`, `alternative` or confidence level) would show. Holm's adjustment is checked
against the worked example of its textbook definition.
"""

from __future__ import annotations

import math
import statistics

import pytest
import scipy.stats
from scipy.special import betainc

from lmsprint.track import discover, stats

# float64 results of a few dozen operations (means, variances, a square root, betainc): agreement to 1e-9 relative is
# far looser than their rounding (~1e-15) and far tighter than any mistake in a formula (which moves the 2nd digit)
REL = 1e-9


def two_sided_p(t: float, df: float) -> float:
    return float(betainc(df / 2, 0.5, df / (df + t * t)))


def t_quantile_975(df: float) -> float:
    """The 97.5% quantile of Student's t, by bisection on the betainc tail (independent of scipy.stats.t)."""
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if two_sided_p(mid, df) > 0.05 else (lo, mid)
    return (lo + hi) / 2


def run(i, value, seed=None, metric="val/loss", path=None, **summary):
    return discover.Run(path or f"exps/r{i}", f"r{i}", "complete", {"seed": i if seed is None else seed},
                        dict(summary), [], {metric: value})


def group(label, values, seeds=None, metric="val/loss", **summary):
    seeds = seeds or list(range(len(values)))
    return stats.Group(label, [run(f"{label}{s}", v, seed=s, metric=metric, path=f"exps/{label}_{s}", **summary)
                               for s, v in zip(seeds, values)], ())


# ---------------------------------------------------------------------------------------------------- Holm


def test_holm_matches_the_textbook_example():
    # four hypotheses, p = 0.01, 0.04, 0.03, 0.005: sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 =
    # 0.02, 0.03, 0.06, 0.04 -> running maximum 0.02, 0.03, 0.06, 0.06; at 0.05 only H4 and H1 are rejected
    adj = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=REL)
    assert [a < 0.05 for a in adj] == [True, False, False, True]


def test_holm_caps_at_one_keeps_order_and_skips_missing():
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]                  # 2 x 0.5 = 1.0, then max(1.0, 0.6)
    assert stats.holm([0.02]) == [0.02]                           # one test: no correction
    assert stats.holm([None, 0.01, None, 0.04]) == pytest.approx([None, 0.02, None, 0.04])
    assert stats.holm([]) == []
    adj = stats.holm([0.001, 0.2, 0.03, 0.03])                    # ties: 0.004, 0.09, 0.09 (3 and 2 x 0.03), 0.2
    assert adj == pytest.approx([0.004, 0.2, 0.09, 0.09], rel=REL)


# ---------------------------------------------------------------------------------------------------- t-tests


def test_welch_against_hand_computed_values_and_scipy():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]
    # means 2 and 4, sample variances 1 and 4: se^2 = 1/3 + 4/3 = 5/3, t = -2 / sqrt(5/3),
    # Welch-Satterthwaite df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17
    se = math.sqrt(5 / 3)
    t, df = -2 / se, 50 / 17
    x = stats.welch_test(a, b)
    assert x.method == "Welch" and x.n == 3 and x.n_ref == 3 and x.diff == pytest.approx(-2.0, rel=REL)
    assert x.p == pytest.approx(two_sided_p(t, df), rel=REL)
    half = t_quantile_975(df) * se
    assert x.ci == pytest.approx((-2 - half, -2 + half), rel=1e-7)  # bisection to 2^-200 of 100: exact to float
    ref = scipy.stats.ttest_ind(a, b, equal_var=False)
    assert x.p == pytest.approx(ref.pvalue, rel=REL) and ref.df == pytest.approx(df, rel=REL)
    # unequal sizes: the test of two independent samples does not need pairs
    y = stats.welch_test([3.1, 3.2, 3.0, 3.3], [3.4, 3.5, 3.45])
    va, vb = statistics.variance([3.1, 3.2, 3.0, 3.3]), statistics.variance([3.4, 3.5, 3.45])
    se = math.sqrt(va / 4 + vb / 3)
    df = (va / 4 + vb / 3) ** 2 / ((va / 4) ** 2 / 3 + (vb / 3) ** 2 / 2)
    assert y.p == pytest.approx(two_sided_p((3.15 - 3.45) / se, df), rel=REL)


def test_paired_against_hand_computed_values():
    arm, ref = [1.0, 2.0, 4.0], [0.5, 1.0, 2.0]
    d = [0.5, 1.0, 2.0]
    m, sd = statistics.fmean(d), statistics.stdev(d)
    t = m / (sd / math.sqrt(3))
    x = stats.paired_test(arm, ref)
    assert x.method == "paired" and x.diff == pytest.approx(m, rel=REL)
    assert x.p == pytest.approx(two_sided_p(t, 2), rel=REL)
    half = t_quantile_975(2) * sd / math.sqrt(3)
    assert x.ci == pytest.approx((m - half, m + half), rel=1e-7)
    assert x.p == pytest.approx(scipy.stats.ttest_rel(arm, ref).pvalue, rel=REL)
    # the same numbers as independent samples: the paired test is the sharper one here
    assert x.p < stats.welch_test(arm, ref).p


def test_target_test_is_one_sided_in_the_metrics_direction():
    # modded-nanogpt's record rule: mean val loss at or below the target, one-sided one-sample t-test
    v = [3.270, 3.275, 3.271, 3.268]
    m, sd = statistics.fmean(v), statistics.stdev(v)
    t = (m - 3.28) / (sd / 2)
    x = stats.target_test(v, 3.28, "val/loss")
    assert x.alternative == "less" and x.n == 4 and x.mean == pytest.approx(m, rel=REL)
    assert x.p == pytest.approx(two_sided_p(t, 3) / 2, rel=REL) and x.p < stats.RECORD_ALPHA  # t < 0: half the tail
    assert x.p == pytest.approx(scipy.stats.ttest_1samp(v, 3.28, alternative="less").pvalue, rel=REL)
    above = stats.target_test([3.29, 3.30, 3.31], 3.28, "val/loss")
    assert above.p > 0.5  # the mean is above the target: no evidence it reaches it
    acc = stats.target_test([0.444, 0.445, 0.446], 0.4361, "val/acc")  # accuracy: at or above
    assert acc.alternative == "greater" and acc.p < 0.05
    assert stats.target_test([3.0, 3.1], 3.28, "val/loss").p is None  # too few seeds: no p
    assert stats.target_test([], 3.28, "val/loss") is None


def test_t_interval_of_the_mean():
    lo, hi = stats.t_interval([1.0, 2.0, 3.0])
    assert t_quantile_975(2) == pytest.approx(4.303, abs=5e-4)  # the printed tables' t(0.975, 2)
    half = t_quantile_975(2) / math.sqrt(3)  # sd = 1
    assert (lo, hi) == pytest.approx((2 - half, 2 + half), rel=REL)
    lo, hi = stats.t_interval([1.0, 3.0])     # 2 seeds: t(0.975, 1) = 12.706: wide, as it should be
    assert t_quantile_975(1) == pytest.approx(12.706, abs=5e-4)
    assert hi - lo == pytest.approx(2 * t_quantile_975(1) * math.sqrt(2) / math.sqrt(2), rel=REL)
    assert stats.t_interval([1.0]) is None


# ---------------------------------------------------------------------------------------------------- verdicts


def test_judge_tests_every_arm_against_the_reference_with_holm():
    ref = group("ref", [3.00, 3.02, 3.01])
    worse = group("worse", [3.30, 3.32, 3.31])     # far above: significant even after Holm
    close = group("close", [3.01, 3.03, 2.99])     # within the spread
    two = group("two", [2.0, 2.1])                 # 2 seeds: never called
    against, verdicts = stats.judge([ref, worse, close, two], ref, "val/loss")
    assert against is ref and verdicts[id(ref)].text == "reference"
    w, c = verdicts[id(worse)], verdicts[id(close)]
    assert w.text == "worse" and w.test.method == "Welch" and c.text == "not significant"
    assert verdicts[id(two)].text.startswith(stats.TOO_FEW) and verdicts[id(two)].test is None
    # Holm over the two arms tested (the 2-seed arm is not a test)
    raw = [scipy.stats.ttest_ind(g, [3.00, 3.02, 3.01], equal_var=False).pvalue
           for g in ([3.30, 3.32, 3.31], [3.01, 3.03, 2.99])]
    assert [w.test.p_holm, c.test.p_holm] == pytest.approx(stats.holm(raw), rel=REL)
    # accuracy: higher is better, so a higher mean is "better"
    a, b = group("a", [0.30, 0.31, 0.30], metric="val/acc"), group("b", [0.40, 0.41, 0.40], metric="val/acc")
    against, v = stats.judge([a, b], None, "val/acc")
    assert against is b and v[id(b)].text == "best (by mean)" and v[id(a)].text == "worse"


def test_a_reference_with_too_few_seeds_calls_nothing():
    ref = group("ref", [3.0, 3.1])
    far = group("far", [9.0, 9.1, 9.2])
    _, v = stats.judge([ref, far], ref, "val/loss")
    assert v[id(ref)].text == f"reference; {stats.TOO_FEW} (n=2)" and v[id(far)].text.startswith(stats.TOO_FEW)


def test_runs_sharing_a_seed_are_not_seeds():
    same = group("same", [3.0, 3.5, 3.2], seeds=[5, 5, 5])  # reruns of one seed: their spread is not seed noise
    ref = group("ref", [3.0, 3.01, 3.02])
    _, v = stats.judge([ref, same], ref, "val/loss")
    assert same.n_seeds == 1 and v[id(same)].text.startswith(stats.TOO_FEW)


def test_paired_test_only_for_the_same_seeds_started_together():
    ref = group("ref", [3.00, 3.10, 3.20])
    arm = group("arm", [3.02, 3.13, 3.21])      # each seed a little worse: the pairs see it, Welch does not
    together = lambda a, b: a.flat["seed"] == b.flat["seed"]  # noqa: E731
    _, v = stats.judge([ref, arm], ref, "val/loss", together)
    x = v[id(arm)].test
    assert x.method == "paired" and x.p == pytest.approx(
        scipy.stats.ttest_rel([3.02, 3.13, 3.21], [3.00, 3.10, 3.20]).pvalue, rel=REL)
    _, v = stats.judge([ref, arm], ref, "val/loss")  # not started together: Welch
    assert v[id(arm)].test.method == "Welch" and v[id(arm)].test.p > x.p
    other = group("other", [3.02, 3.13, 3.21], seeds=[0, 1, 7])  # another seed set: Welch
    _, v = stats.judge([ref, other], ref, "val/loss", together)
    assert v[id(other)].test.method == "Welch"


def test_non_finite_arms_are_not_ranked():
    ok = group("ok", [3.0, 3.1, 3.2])
    nan = group("nan", [float("nan"), 1.0, 1.0])
    against, v = stats.judge([ok, nan], None, "val/loss")
    assert against is ok and v[id(nan)].text == f"not ranked: {stats.NON_FINITE}"


def test_throughput_flag_names_the_arm_off_by_more_than_the_seed_spread():
    arms = [group("a", [3.0, 3.0, 3.0], **{"perf/tokens_per_s": 890.0, "params_active": 10}),
            group("b", [3.0, 3.0, 3.0], **{"perf/tokens_per_s": 890.0, "params_active": 10}),
            group("c", [3.0, 3.0, 3.0], **{"perf/tokens_per_s": 830.0, "params_active": 10})]
    arms[0].runs[0].summary["perf/tokens_per_s"] = 885.0  # a seed spread of a few tokens/s
    arms[0].runs[1].summary["perf/tokens_per_s"] = 895.0
    flags = stats.throughput_flags(arms)
    assert len(flags) == 1 and flags[0].startswith("throughput: c ran at 830 tokens/s") and "load" in flags[0]
    arms[2].runs[0].summary["perf/tokens_per_s"] = 950.0  # a spread as large as the gap: nothing to flag
    arms[2].runs[1].summary["perf/tokens_per_s"] = 710.0
    assert stats.throughput_flags(arms) == []
