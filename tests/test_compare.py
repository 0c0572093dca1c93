"""Tests of `lmsprint compare` on hand-made run directories that follow the Runs contract: table contents, only
differing config keys, arms (mean, sample sd, tests: test_stats.py checks the numbers), tables by val set, targets
and time to target, unfinished runs, plots and report.md, one-line errors."""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np
import scipy.stats
import pytest
import yaml

from lmsprint.cli import main
from lmsprint.config import build_config
from lmsprint.errors import UserError
from lmsprint import rundir
from lmsprint.rundir import write_latest_pointer
from lmsprint.track import discover, report, stats
from lmsprint.track.plots import val_curve


def make_run(base, name, *, status="complete", seed=0, val_loss=3.0, val_acc=None, n_evals=3, val_set=None,
             eval_times=False, tps=2560.0, target=None, **flags):
    """A run directory as `lmsprint train` leaves it: config.yaml, metrics.jsonl, summary.json.

    val_acc defaults to 0.6 - val_loss / 10, so that runs differ in accuracy as they do in loss. `val_set`: the
    val-set identity recorded in summary.json (a sha256 string: 4,096 tokens of 32, char), None: none recorded
    (a run of an older lmsprint). `eval_times`: eval rows carry their own times (as lmsprint writes them now: the
    eval at iter 10 i happens at 0.5 i + 0.05 s of training). `target`: summary.json's target record."""
    val_acc = 0.6 - val_loss / 10 if val_acc is None else val_acc
    d = os.path.join(base, name)
    os.makedirs(os.path.join(d, "checkpoints"))
    values = {"config_format": "demo", "n_layer": 1, "n_embd": 32, "n_head": 4, "sequence_length": 32,
              "batch_size": 4, "acc_steps": 1, "seed": seed, "exp_name": name, "results_base_folder": base}
    values.update(flags)
    cfg = build_config(values)
    with open(os.path.join(d, "config.yaml"), "w") as fh:
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
    rows = []
    for i in range(1, n_evals + 1):
        it = 10 * i
        rows.append({"iter": it, "train/loss": val_loss + 1.0 / i, "tokens": it * 128, "time/train_s": 0.5 * i,
                     "perf/tokens_per_s": 256.0})
        ev = {"iter": it, "val/loss": val_loss + 0.5 / i, "val/acc": val_acc - 0.1 / i, "val/bpb": 1.5 + 0.2 / i,
              "val/perplexity": float(np.exp(val_loss + 0.5 / i)), "tokens": it * 128}
        if eval_times:
            ev.update({"time/train_s": 0.5 * i + 0.05, "time/wall_s": 0.7 * i})
        rows.append(ev)
    with open(os.path.join(d, "metrics.jsonl"), "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    done = status == "complete"
    summary = {"status": status, "run_dir": d, "name": name, "config_format": "demo", "model": "base",
               "params_total": 12345, "params_active": 12345, "iterations_done": 10 * n_evals,
               "tokens": 1280 * n_evals, "time/train_s": 0.5 * n_evals, "time/eval_s": 0.1, "time/compile_s": 0.0,
               "perf/tokens_per_s": tps, "perf/mfu": None,
               "final": {"val/loss": val_loss, "val/perplexity": float(np.exp(val_loss)), "val/acc": val_acc,
                         "val/bpb": val_loss / 2, "eval_tokens": 4096} if done else None,
               "seed": seed, "data_seed": 1337, "finished_at": "2025-01-01T00:00:00" if done else None}
    if val_set is not None:
        ident = {"val_sha256": val_set, "tokenizer": "char", "sequence_length": 32, "tokens": 4096,
                 "covers": "full split"}
        summary["val_sets"] = {"fixed": {**ident, "tokens": 512, "covers": "fixed set"}, "final": ident}
    if target is not None:
        summary["target"] = target
    with open(os.path.join(d, "summary.json"), "w") as fh:
        json.dump(summary, fh)
    return d


@pytest.fixture
def runs(tmp_path):
    base = str(tmp_path / "exps")
    # group A (ls=0): 3.0 3.1 3.2 -> mean 3.1, sd 0.1; group B (ls=0.1): 3.05 3.15 3.25 -> mean 3.15, sd 0.1
    for s, v in enumerate([3.0, 3.1, 3.2]):
        make_run(base, f"ls0_s{s}", seed=s, val_loss=v, label_smoothing=0.0)
    for s, v in enumerate([3.05, 3.15, 3.25]):
        make_run(base, f"ls01_s{s}", seed=s, val_loss=v, label_smoothing=0.1)
    return base


def test_table_has_final_metrics_and_only_differing_keys(runs):
    c = report.compare([runs])
    assert [r.name for r in c.runs] == sorted(r.name for r in c.runs) and len(c.runs) == 6
    assert c.diff == ["seed", "label_smoothing"] or set(c.diff) == {"seed", "label_smoothing"}
    header, rows = report.run_table(c.runs, c.diff)
    for col in ["val loss", "val acc", "val ppl", "val bpb", "tokens", "train time", "tokens/s", "params", "active",
                "label_smoothing", "seed"]:
        assert col in header
    assert "lr" not in header and "exp_name" not in header and "n_layer" not in header
    row = dict(zip(header, rows[[r.name for r in c.runs].index("ls01_s1")]))
    assert row["val loss"] == "3.1500" and row["val bpb"] == "1.5750" and row["label_smoothing"] == "0.1"
    assert row["val ppl"] == f"{np.exp(3.15):.2f}" and row["val acc"] == "0.2850"
    assert row["tokens"] == "3.84k" and row["train time"] == "1.5s" and row["params"] == "12.3k"
    assert row["status"] == "complete"
    text = c.text()
    assert "ls01_s1" in text and stats.METHOD in text


def _cells(header, rows):
    return {r[0]: dict(zip(header, r)) for r in rows}


def test_arms_mean_sd_and_welch_verdicts(runs):
    c = report.compare([runs])
    assert len(c.groups) == 2 and len(c.tables) == 1
    by = {g.label: g for g in c.groups}  # named runs (ls0_s0, ...): arms carry the name stem
    a = by["ls0"]
    m, s = a.mean_sd("val/loss")
    ref = np.array([3.0, 3.1, 3.2])
    assert m == pytest.approx(ref.mean()) and s == pytest.approx(ref.std(ddof=1))  # sample sd
    t = c.tables[0]
    arms = _cells(*report.arm_table(t))
    assert arms["ls0"]["val loss mean ± sd"] == "3.1000 ± 0.1000" and arms["ls0"]["seeds"] == "0,1,2"
    tests = _cells(*report.verdict_table(t))
    # ls0 is best by mean (3.1 < 3.15); ls01 vs ls0: Δ +0.05, Welch t = 0.05 / sqrt(2 x 0.01 / 3) = 0.61, df 4
    assert tests["ls0"]["verdict"] == "best (by mean)" and tests["ls01"]["Δ val/loss"] == "+0.0500"
    assert tests["ls01"]["test"] == "Welch" and tests["ls01"]["verdict"] == "not significant"
    assert tests["ls01"]["p"] == "0.57" == tests["ls01"]["p (Holm)"]  # scipy: 0.5734 (one arm: Holm changes nothing)
    lo, hi = (float(x) for x in tests["ls01"]["95% CI"].strip("[]").split(","))
    assert lo < 0 < hi and hi - 0.05 == pytest.approx(0.05 - lo, abs=1e-4)
    assert any("against the best" in n for n in t.notes)  # picked after the runs: say so
    # accuracy: higher is better (0.29 > 0.285), same best arm
    assert stats.best_group(c.groups, "val/loss") is a and stats.best_group(c.groups, "val/acc") is a
    c2 = report.compare([runs], metric="val/acc")
    assert _cells(*report.verdict_table(c2.tables[0]))["ls01"]["Δ val/acc"] == "-0.0050"


def test_fewer_than_three_seeds_is_too_few_to_call_never_significant(tmp_path):
    base = str(tmp_path)
    # 2 seeds each, 0.5 apart with a spread of 0.01: the old "sd_a + sd_b" rule said "beyond noise"
    for s, (v, acc) in enumerate([(3.0, 0.45), (3.02, 0.46)]):
        make_run(base, f"a{s}", seed=s, val_loss=v, val_acc=acc, lr=1e-3)
    for s, (v, acc) in enumerate([(2.5, 0.30), (2.51, 0.31)]):
        make_run(base, f"b{s}", seed=s, val_loss=v, val_acc=acc, lr=3e-3)
    make_run(base, "c0", seed=0, val_loss=2.4, val_acc=0.20, lr=1e-2)
    c = report.compare([base])
    tests = _cells(*report.verdict_table(c.tables[0]))
    assert tests["lr=0.01"]["verdict"] == f"best (by mean); {stats.TOO_FEW} (n=1)"
    assert tests["lr=0.001"]["verdict"] == f"{stats.TOO_FEW} (n=2 vs 1; 3 each needed)"
    assert tests["lr=0.003"]["verdict"].startswith(stats.TOO_FEW)
    assert "better" not in c.text().split("method:")[0] and "worse" not in c.text().split("method:")[0]
    c = report.compare([base], reference="lr=0.003", metric="val/acc")
    tests = _cells(*report.verdict_table(c.tables[0]))
    assert tests["lr=0.003"]["verdict"] == f"reference; {stats.TOO_FEW} (n=2)"
    assert all(v["verdict"].startswith(("reference", stats.TOO_FEW)) for v in tests.values())


def test_incomplete_runs_are_marked_or_skipped(runs, capsys):
    live = make_run(runs, "ls0_s3", status="running", seed=3, val_loss=9.0, label_smoothing=0.0)
    make_run(runs, "ls0_s4", status="failed", seed=4, val_loss=9.0, label_smoothing=0.0)
    # a run whose summary still says running while no process holds its lock died (here before any checkpoint)
    make_run(runs, "ls0_s5", status="running", seed=5, val_loss=9.0, label_smoothing=0.0)
    rundir.lock_run_dir(live)  # this process plays the live trainer of ls0_s3
    try:
        c = report.compare([runs])
    finally:
        rundir.unlock_run_dir(live)
    header, rows = report.run_table(c.runs, c.diff)
    marked = {r[0]: r[1] for r in rows if r[0].endswith("*")}
    assert marked == {"ls0_s3*": "running", "ls0_s4*": "failed", "ls0_s5*": "failed"}
    # their numbers are the last logged ones; they are not part of the seed statistics
    row = dict(zip(header, rows[[r.name for r in c.runs].index("ls0_s3")]))
    assert row["val loss"] == f"{9.0 + 0.5 / 3:.4f}"
    assert sum(g.n for g in c.groups) == 6
    assert any("not complete" in n for n in c.notes)
    c2 = report.compare([runs], only_complete=True)
    assert len(c2.runs) == 6 and any("skipped 3 runs" in n for n in c2.notes)


def test_find_runs_dirs_globs_and_nested_folders(tmp_path):
    make_run(str(tmp_path / "exps"), "solo")
    make_run(str(tmp_path / "exps" / "sweep-lr"), "lr=1_seed=0")
    make_run(str(tmp_path / "exps" / "sweep-lr"), "lr=2_seed=0")
    found = discover.find_runs([str(tmp_path / "exps")])
    assert sorted(os.path.basename(p) for p in found) == ["lr=1_seed=0", "lr=2_seed=0", "solo"]
    assert len(discover.find_runs([str(tmp_path / "exps" / "sweep-lr" / "lr=*")])) == 2
    assert len(discover.find_runs([str(tmp_path / "exps" / "solo"), str(tmp_path / "exps" / "solo")])) == 1
    with pytest.raises(UserError, match="no run directories"):
        discover.find_runs([str(tmp_path / "nothing*")])


def test_shell_glob_of_a_results_folder_includes_the_latest_pointer(tmp_path):
    """`lmsprint compare exps/*` also passes the `latest` pointer file: it names a run already in the list."""
    make_run(str(tmp_path / "exps"), "a")
    b = make_run(str(tmp_path / "exps"), "b")
    write_latest_pointer(str(tmp_path / "exps"), str(b))
    specs = sorted(str(p) for p in (tmp_path / "exps").iterdir())  # what the shell expands exps/* to
    assert any(s.endswith("latest") for s in specs)
    assert sorted(os.path.basename(p) for p in discover.find_runs(specs)) == ["a", "b"]


def test_val_curve_carries_time_forward():
    rows = [{"iter": 10, "train/loss": 4.0, "time/train_s": 1.5, "tokens": 100},
            {"iter": 10, "val/bpb": 2.0},
            {"iter": 20, "val/bpb": 1.8, "tokens": 200}]
    c = val_curve(rows, "val/bpb", tokens_per_step=10)
    assert c["val/bpb"] == [2.0, 1.8] and c["time/train_s"] == [1.5, 1.5] and c["tokens"] == [100, 200]
    c = val_curve([{"iter": 3, "val/bpb": 2.0}], "val/bpb", tokens_per_step=10)
    assert c["tokens"] == [30] and c["time/train_s"] == [None]


@pytest.mark.slow
def test_cli_report_with_plots(runs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    assert main(["compare", runs, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ls0_s2" in printed and "not significant" in printed and "report.md" in printed
    md = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["val_acc_vs_time.png", "val_acc_vs_tokens.png", "val_bpb_vs_time.png", "val_bpb_vs_tokens.png",
                    "val_loss_vs_time.png", "val_loss_vs_tokens.png"]
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(embedded) == pngs
    for p in pngs:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / p).stat().st_size > 5000
    assert "| ls01_s2 |" in md and "not significant" in md and "Welch's t-test (scipy.stats.ttest_ind" in md
    assert (out / "runs.csv").read_text().count("\n") == 7
    # an existing report is never overwritten
    assert main(["compare", runs, "--out", str(out)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    # the default folder is new each time
    monkeypatch.chdir(tmp_path)
    assert report.unique_out_dir(None) != report.unique_out_dir(None)
    made = sorted(os.listdir(tmp_path / "reports"))
    assert len(made) == 2 and all(m.startswith("compare-") for m in made)


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run directories" in err[0]


def test_non_finite_runs_are_never_best_and_shared_seeds_are_not_seeds(tmp_path):
    base = str(tmp_path)
    # lr=0.01 diverged: NaN final loss in one of its runs; it must not be ranked, whatever its other runs say
    for s, v in enumerate([float("nan"), 1.0, 1.0]):
        make_run(base, f"nan{s}", seed=s, val_loss=v, lr=1e-2)
    for s, v in enumerate([3.0, 3.1, 3.05]):
        make_run(base, f"ok{s}", seed=s, val_loss=v, lr=1e-3)
    # three runs of lr=3e-3 with the same seed (e.g. rerun by hand): their spread is not seed noise
    for x, v in zip("abc", [3.5, 3.2, 3.3]):
        make_run(base, f"same_{x}", seed=5, val_loss=v, lr=3e-3)
    c = report.compare([base])
    by = {g.label: g for g in c.groups}
    assert stats.best_group(c.groups, "val/loss") is by["lr=0.001"]
    assert by["lr=0.01"].mean_sd("val/loss") == (None, None)
    assert by["lr=0.003"].mean_sd("val/loss") == (pytest.approx(3.3333333), None) and by["lr=0.003"].n_seeds == 1
    tests = _cells(*report.verdict_table(c.tables[0]))
    arms = _cells(*report.arm_table(c.tables[0]))
    assert tests["lr=0.01"]["verdict"] == f"not ranked: {stats.NON_FINITE}"
    assert arms["lr=0.01"]["val loss mean ± sd"] == stats.NON_FINITE
    assert tests["lr=0.003"]["verdict"] == f"{stats.TOO_FEW} (n=1 vs 3; 3 each needed)"
    assert arms["lr=0.003"]["val loss mean ± sd"] == "3.3333 (one seed)"
    assert tests["lr=0.001"]["verdict"] == "best (by mean)"


@pytest.mark.slow
def test_runs_csv_is_numeric_and_load_differences_are_flagged(tmp_path):
    base = str(tmp_path / "exps")
    for s in range(3):
        d = make_run(base, f"r{s}", seed=s, val_loss=3.0 + s / 100)
    # r2 was measured on a loaded machine: half the tokens/s of the same config
    summary = json.load(open(os.path.join(d, "summary.json")))
    summary["perf/tokens_per_s"] = 1000.0
    json.dump(summary, open(os.path.join(d, "summary.json"), "w"))
    c = report.compare([base])
    warn = [n for n in c.tables[0].notes if "different load" in n]
    assert len(warn) == 1 and "2.56x" in warn[0] and "r2" in warn[0] and "measured under different load" in c.text()
    out = tmp_path / "rep"
    assert main(["compare", base, "--out", str(out), "--no_report"]) == 0
    assert main(["compare", base, "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert [r["run"] for r in rows] == ["r0", "r1", "r2"]
    for r in rows:
        for k in ("val/loss", "val/acc", "tokens", "time/train_s", "perf/tokens_per_s", "params_total"):
            float(r[k])  # plain numbers: no "3.84k", no "1.5s"
    assert float(rows[2]["perf/tokens_per_s"]) == 1000.0 and int(rows[0]["tokens"]) == 3840
    assert rows[0]["seed_group"] == "all runs"


@pytest.mark.slow
def test_plots_every_run_final_point_bands_and_honest_axes(tmp_path):
    from matplotlib.figure import Figure  # noqa: F401  (the plots need matplotlib)
    from lmsprint.track import plots

    base = str(tmp_path / "exps")
    # two identical curves (one would hide the other) and a seed group of 2 with a band
    for s in range(2):
        make_run(base, f"a{s}", seed=s, val_loss=3.0, lr=1e-3)
    make_run(base, "b0", seed=0, val_loss=3.0001, lr=3e-3)
    out = tmp_path / "rep"
    assert main(["compare", base, "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "val_loss_vs_tokens.png" in md
    # axes: at least 1% of the values (or 0.01) however close the curves are
    lo, hi = plots.min_span_limits(0.3001, 0.3003)
    assert hi - lo >= 0.01
    lo, hi = plots.min_span_limits(3.0, 3.0001)
    assert hi - lo >= 0.03
    lo, hi = plots.min_span_limits(2.0, 4.0)
    assert (lo, hi) == (pytest.approx(1.95), pytest.approx(4.05))


def test_a_run_whose_metrics_are_not_utf8_is_skipped_with_a_line(runs, capsys):
    """One damaged metrics.jsonl (bytes that are not UTF-8) used to make compare fail for every run."""
    bad = os.path.join(runs, "ls0_s1", "metrics.jsonl")
    with open(bad, "ab") as fh:
        fh.write(b'{"iter": 40, "val/loss": 2.0, "note": "\xff\xfe"}\n')
    c = report.compare([runs])
    assert sorted(r.name for r in c.runs) == ["ls01_s0", "ls01_s1", "ls01_s2", "ls0_s0", "ls0_s2"]
    skipped = [n for n in c.notes if n.startswith("skipped ")]
    assert len(skipped) == 1 and "ls0_s1" in skipped[0] and "metrics.jsonl: line 7 is not UTF-8 text" in skipped[0]
    assert main(["compare", runs]) == 0
    out = capsys.readouterr().out
    assert "metrics.jsonl: line 7 is not UTF-8 text" in out and "ls01_s1" in out
    # every run unreadable: one line
    with pytest.raises(UserError, match="none of the runs could be read: skipped"):
        report.compare([os.path.join(runs, "ls0_s1")])


def test_diverged_is_computed_for_summaries_without_the_key(tmp_path):
    """Summaries written before `diverged` existed: a final val loss above ln(vocab_size) is still shown as diverged."""
    base = str(tmp_path / "exps")
    make_run(base, "calm", val_loss=3.0)
    make_run(base, "wild", val_loss=11.0, seed=1)  # ln(50304) = 10.826
    make_run(base, "unfinished", val_loss=11.0, seed=2, status="interrupted")
    c = report.compare([base])
    by = {r.name: r for r in c.runs}
    assert by["wild"].diverged and not by["calm"].diverged and not by["unfinished"].diverged
    header, rows = report.run_table(c.runs, c.diff)
    status = {row[0]: row[1] for row in rows}
    assert status == {"calm": "complete", "wild": "diverged", "unfinished*": "interrupted"}
    assert any(n.startswith("diverged (1 run:") and n.endswith(": wild") for n in c.notes)
# ---------------------------------------------------------------------------------------------------- val sets


@pytest.mark.slow
def test_runs_on_another_val_set_get_their_own_table_with_a_one_line_reason(tmp_path, capsys):
    base = str(tmp_path / "exps")
    for s in range(3):
        make_run(base, f"a_s{s}", seed=s, val_loss=3.0 + s / 100, lr=1e-3, val_set="aa" * 32)
        make_run(base, f"b_s{s}", seed=s, val_loss=2.0 + s / 100, lr=3e-3, val_set="aa" * 32)
    # the same config on another val token file (e.g. another val_fraction): a far lower loss, never ranked above
    for s in range(2):
        make_run(base, f"c_s{s}", seed=s, val_loss=1.0, lr=1e-2, val_set="bb" * 32)
    # a run of an older lmsprint: no identity recorded
    make_run(base, "old_s0", seed=0, val_loss=0.5, lr=1e-3)
    c = report.compare([base])
    assert len(c.tables) == 3
    first, other, old = c.tables
    assert {g.label for g in first.groups} == {"a", "b"} and first.note is None
    assert stats.best_group(first.groups, "val/loss").label == "b"  # c (1.0) is not in the ranking
    assert [g.label for g in other.groups] == ["all runs"] and other.note.startswith("ranked apart:")
    assert "val token file (sha256) bbbbbbbbbbbb... vs aaaaaaaaaaaa..." in other.note and "\n" not in other.note
    assert "recorded no val-set identity" in old.note
    text = c.text()
    assert "== val set 1 of 3: full split, 4,096 tokens (val sha256 aaaaaaaaaaaa..., char, windows of 32)" in text
    assert text.count("ranked apart:") == 2
    assert main(["compare", base, "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.count("## Val set") == 3 and "set2_val_loss_vs_time.png" in md
    rows = list(csv.DictReader(open(tmp_path / "rep" / "runs.csv")))
    assert {r["run"]: r["val_set"] for r in rows}["c_s0"] == "2"


def test_fewer_tokens_or_another_sequence_length_is_another_val_set(tmp_path):
    base = str(tmp_path)
    for name, seq in (("x", 32), ("y", 64)):
        d = make_run(base, name, val_set="cc" * 32)
        s = json.load(open(os.path.join(d, "summary.json")))
        s["val_sets"]["final"]["sequence_length"] = seq
        json.dump(s, open(os.path.join(d, "summary.json"), "w"))
    c = report.compare([base])
    assert len(c.tables) == 2 and "sequence length 64 vs 32" in c.tables[1].note


def test_the_same_dataset_name_is_one_val_split_under_every_preset():
    """No preset sets `val_fraction`: the split is the dataset's own (data/sources.py)."""
    from lmsprint.config.presets import PRESETS

    assert all("val_fraction" not in p for p in PRESETS.values())
    cfgs = [build_config({"config_format": p, "dataset": "shakespeare"}) for p in PRESETS]
    assert {c.data.val_fraction for c in cfgs} == {None}


# ---------------------------------------------------------------------------------------------------- targets


def test_target_p_values_and_time_to_target(tmp_path, capsys):
    base = str(tmp_path / "exps")
    # eval losses of a run with final loss v: v + 0.5, v + 0.25, v + 0.1667 at iters 10, 20, 30
    for s, v in enumerate([3.00, 3.01, 3.02]):
        make_run(base, f"fast_s{s}", seed=s, val_loss=v, eval_times=True, lr=3e-3)
    for s, v in enumerate([3.40, 3.35, 3.45]):
        make_run(base, f"slow_s{s}", seed=s, val_loss=v, eval_times=True, lr=1e-3)
    c = report.compare([base], target="val/loss=3.28")
    t = c.tables[0]
    cells = _cells(*report.target_table(t))
    # fast: 3.25 at iter 20 for seeds 0 and 1 (3.26 for seed 1), 3.27 for seed 2: all reach 3.28 at iter 20
    assert cells["fast"]["reached"] == "3/3" and cells["slow"]["reached"] == "0/3"
    assert cells["fast"]["train time to target: median [min-max]"] == "1.1s [1.1s-1.1s]"  # 0.5 x 2 + 0.05
    assert cells["fast"]["tokens to target"] == "2.56k [2.56k-2.56k]" and cells["slow"]["tokens to target"] == "-"
    p = scipy.stats.ttest_1samp([3.00, 3.01, 3.02], 3.28, alternative="less").pvalue
    assert float(cells["fast"]["p (mean ≤ 3.28)"]) == pytest.approx(p, rel=0.03) and cells["fast"][
        "record rule (p < 0.01)"] == "met"
    assert cells["slow"]["record rule (p < 0.01)"] == "not met"
    assert "ttest_1samp, alternative 'less'" in c.text()
    runs = _cells(*report.run_table(t.runs, t.diff, t.target, t.times))
    assert runs["fast_s0"]["reached val/loss=3.28"] == "step 20, 1.1s"
    assert runs["slow_s0"]["reached val/loss=3.28"] == "no"
    # accuracy targets count at or above
    c = report.compare([base], target="val/acc=0.24")  # eval acc 0.6 - v/10 - 0.1/i: fast is at 0.248+ at iter 20
    cells = _cells(*report.target_table(c.tables[0]))
    assert cells["fast"]["reached"] == "3/3" and cells["slow"]["reached"] == "0/3"
    assert cells["fast"]["tokens to target"] == "2.56k [2.56k-2.56k]"


def test_a_target_every_run_recorded_is_used_and_its_record_wins(tmp_path):
    base = str(tmp_path)
    rec = {"metric": "val/loss", "value": 3.5, "reached": True, "step": 10, "tokens": 1280, "train_s": 9.0,
           "wall_s": 12.0, "eval": 1, "measured": 3.4}
    for s in range(3):
        make_run(base, f"r_s{s}", seed=s, target=rec)
    c = report.compare([base])
    assert c.target.text == "val/loss=3.5" and "recorded by every run" in c.target.source
    cells = _cells(*report.target_table(c.tables[0]))
    assert cells["all runs"]["train time to target: median [min-max]"] == "9.0s [9.0s-9.0s]"
    assert cells["all runs"]["wall time to target"] == "12.0s [12.0s-12.0s]"


def test_a_reached_eval_row_without_its_own_time_is_placed_by_its_step():
    from lmsprint.track.plots import val_curve

    rows = [{"iter": 10, "train/loss": 4.0, "time/train_s": 1.0, "tokens": 100},
            {"iter": 15, "val/loss": 3.0},                                    # between train rows at 10 and 20
            {"iter": 20, "train/loss": 3.0, "time/train_s": 3.0, "tokens": 200},
            {"iter": 20, "val/loss": 2.5, "time/train_s": 2.9, "time/wall_s": 4.0, "tokens": 200}]  # its own time
    c = val_curve(rows, "val/loss", tokens_per_step=10)
    assert c["time/train_s"] == [2.0, 2.9] and c["time/wall_s"] == [None, 4.0] and c["tokens"] == [150, 200]


# ---------------------------------------------------------------------------------------------------- pairs


def test_runs_of_one_seed_started_together_by_a_sweep_batch_are_paired(tmp_path):
    from lmsprint.track import sweep as S

    base = str(tmp_path / "sw")
    for s, (r, a) in enumerate([(3.00, 3.02), (3.10, 3.13), (3.20, 3.21)]):
        make_run(base, f"arm=ref_seed={s}", seed=s, val_loss=r, lr=1e-3, exp_name=f"arm=ref_seed={s}")
        make_run(base, f"arm=new_seed={s}", seed=s, val_loss=a, lr=3e-3, exp_name=f"arm=new_seed={s}")
    S.write_record(base, {"grid": {}, "seeds": [0, 1, 2]})
    for s in range(3):  # seed-major batches: both arms of a seed together
        S.record_launch(base, [f"arm=ref_seed={s}", f"arm=new_seed={s}"])
    c = report.compare([base], reference="arm=ref")
    tests = _cells(*report.verdict_table(c.tables[0]))
    assert tests["arm=new"]["test"] == "paired (3 seeds)"
    p = scipy.stats.ttest_rel([3.02, 3.13, 3.21], [3.00, 3.10, 3.20]).pvalue
    assert float(tests["arm=new"]["p"]) == pytest.approx(p, rel=0.03)  # shown to 2 digits
    # one run of a seed resumed in a later batch without its partner: no longer started together -> Welch
    S.record_launch(base, ["arm=new_seed=1"])
    c = report.compare([base], reference="arm=ref")
    assert _cells(*report.verdict_table(c.tables[0]))["arm=new"]["test"] == "Welch"


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, says", [
    (["--target", "val/los=3.2"], "--target val/los=3.2: 'val/los' is not a val metric; use one of val/loss"),
    (["--target", "val/loss=nan"], "not a finite number"),
    (["--target", "val/loss=inf"], "not a finite number"),
    (["--target", "val/loss"], "is not METRIC=VALUE"),
    (["--reference", "nobody*"], "--reference 'nobody*' matches no arm; give one arm's label"),
    (["--metric", "val/bpb"], "--metric val/bpb: no complete run has a final val/bpb; the runs have val/loss"),
])
def test_bad_input_is_one_line(tmp_path, in_process, args, says):
    base = str(tmp_path / "exps")
    for s in range(2):
        d = make_run(base, f"r_s{s}", seed=s)
        sm = json.load(open(os.path.join(d, "summary.json")))
        sm["final"].pop("val/bpb")  # a mix whose only metric asked for is missing
        json.dump(sm, open(os.path.join(d, "summary.json"), "w"))
    r = in_process("compare", base, "--no_report", *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


# ---------------------------------------------------------------------------------------------------- plots


def test_plot_legend_says_what_the_final_eval_covered_and_bands_are_confidence_intervals(tmp_path):
    from lmsprint.track import plots

    base = str(tmp_path)
    for s in range(3):
        make_run(base, f"r_s{s}", seed=s, val_loss=3.0 + s / 10, val_set="dd" * 32)
    c = report.compare([base])
    assert report.final_label(c.tables[0]) == "final eval (full split, 4,096 tokens)"
    make_run(str(tmp_path / "old"), "o", final_eval="fixed")
    c = report.compare([str(tmp_path / "old")])
    assert report.final_label(c.tables[0]) == "final eval (fixed set, 4,096 tokens)"
    mx, my, lo, hi = plots._band([([1, 2], [3.0, 2.0]), ([1, 2], [3.2, 2.2]), ([1, 2], [3.4, 2.4])])
    assert my == pytest.approx([3.2, 2.2]) and (lo[0], hi[0]) == pytest.approx(stats.t_interval([3.0, 3.2, 3.4]))


def _stopped_at(d, sizes: dict):
    """Rewrite run `d`'s summary as a final eval that scored nested prefixes {tokens: val_loss}, stopping at the
    largest (what `--final_eval auto` leaves when it sizes the eval to the run's time)."""
    path = os.path.join(d, "summary.json")
    s = json.load(open(path))
    s["final_prefixes"] = {str(n): {"val/loss": v, "val/perplexity": float(np.exp(v)), "val/acc": 0.5,
                                    "val/bpb": v / 2, "eval_tokens": n} for n, v in sizes.items()}
    last = max(sizes)
    s["final"] = dict(s["final_prefixes"][str(last)])
    s["val_sets"]["final"].update(tokens=last, covers="val prefix")
    json.dump(s, open(path, "w"))


def test_runs_whose_final_evals_stopped_at_different_prefixes_are_ranked_on_the_largest_common_one(tmp_path):
    """Three seeds of arm a stopped at 1,024, 2,048 and 1,024 tokens, arm b at 2,048: one table, every run scored on
    its 1,024-token prefix (the largest all of them have), with a note; a run without prefixes is left as it is."""
    base = str(tmp_path / "exps")
    for s, top in enumerate((1024, 2048, 1024)):
        d = make_run(base, f"a_s{s}", seed=s, lr=1e-3, val_set="aa" * 32)
        _stopped_at(d, {512: 3.2 + s / 100, 1024: 3.1 + s / 100, 2048: 3.0 + s / 100} if top == 2048
                    else {512: 3.2 + s / 100, 1024: 3.1 + s / 100})
    for s in range(3):
        d = make_run(base, f"b_s{s}", seed=s, lr=3e-3, val_set="aa" * 32)
        _stopped_at(d, {512: 2.2 + s / 100, 1024: 2.1 + s / 100, 2048: 2.0 + s / 100})
    c = report.compare([base])
    assert len(c.tables) == 1
    finals = {r.name: r.final["val/loss"] for g in c.tables[0].groups for r in g.runs}
    assert finals == pytest.approx({"a_s0": 3.1, "a_s1": 3.11, "a_s2": 3.12, "b_s0": 2.1, "b_s1": 2.11, "b_s2": 2.12})
    assert any("final metrics on the first 1,024 val tokens" in n and "1,024, 2,048 tokens" in n for n in c.notes)
    assert c.tables[0].valset.tokens == 1024 and c.tables[0].valset.covers == "val prefix"
