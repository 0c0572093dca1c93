"""Tests of `lmsprint compare` on hand-made run directories that follow the Runs contract: table contents, only
differing config keys, seed groups (mean, sample sd, noise rule), unfinished runs, plots and report.md."""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np
import pytest
import yaml

from lmsprint.cli import main
from lmsprint.config import build_config
from lmsprint.errors import UserError
from lmsprint import rundir
from lmsprint.rundir import write_latest_pointer
from lmsprint.track import discover, report, stats
from lmsprint.track.plots import val_curve


def make_run(base, name, *, status="complete", seed=0, val_loss=3.0, val_acc=None, n_evals=3, **flags):
    """A run directory as `lmsprint train` leaves it: config.yaml, metrics.jsonl, summary.json.

    val_acc defaults to 0.6 - val_loss / 10, so that runs differ in accuracy as they do in loss."""
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
        rows.append({"iter": it, "val/loss": val_loss + 0.5 / i, "val/acc": val_acc - 0.1 / i, "val/bpb": 1.5 + 0.2 / i,
                     "val/perplexity": float(np.exp(val_loss + 0.5 / i)), "tokens": it * 128})
    with open(os.path.join(d, "metrics.jsonl"), "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    done = status == "complete"
    summary = {"status": status, "run_dir": d, "name": name, "config_format": "demo", "model": "base",
               "params_total": 12345, "params_active": 12345, "iterations_done": 10 * n_evals,
               "tokens": 1280 * n_evals, "time/train_s": 0.5 * n_evals, "time/eval_s": 0.1, "time/compile_s": 0.0,
               "perf/tokens_per_s": 2560.0, "perf/mfu": None,
               "final": {"val/loss": val_loss, "val/perplexity": float(np.exp(val_loss)), "val/acc": val_acc,
                         "val/bpb": val_loss / 2, "eval_tokens": 4096} if done else None,
               "seed": seed, "data_seed": 1337, "finished_at": "2025-01-01T00:00:00" if done else None}
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
    assert "ls01_s1" in text and stats.NOISE_RULE in text


def test_seed_groups_mean_sd_and_within_noise(runs):
    c = report.compare([runs])
    assert len(c.groups) == 2
    by = {g.label: g for g in c.groups}  # named runs (ls0_s0, ...): groups carry the name stem
    a, b = by["ls0"], by["ls01"]
    m, s = a.mean_sd("val/loss")
    ref = np.array([3.0, 3.1, 3.2])
    assert m == pytest.approx(ref.mean()) and s == pytest.approx(ref.std(ddof=1))  # sample sd
    assert stats.noise_verdict(a, b, "val/loss") == "within noise"  # |3.1 - 3.15| = 0.05 < 0.1 + 0.1
    header, rows = report.group_table(c.groups, "val/loss")
    cells = {r[0]: dict(zip(header, r)) for r in rows}
    assert cells["ls0"]["val/loss vs best"].startswith("best")
    assert cells["ls01"]["val/loss vs best"] == "+0.0500: within noise"
    assert cells["ls0"]["val loss mean ± sd"] == "3.1000 ± 0.1000"
    assert cells["ls0"]["seeds"] == "0,1,2"
    # group A is best in both: lowest loss (3.1 < 3.15) and highest accuracy (0.29 > 0.285)
    assert stats.best_group(c.groups, "val/loss") is a and stats.best_group(c.groups, "val/acc") is a
    header, rows = report.group_table(c.groups, "val/acc")
    cells = {r[0]: dict(zip(header, r)) for r in rows}
    assert cells["ls0"]["val/acc vs best"].startswith("best")
    assert cells["ls01"]["val/acc vs best"] == "-0.0050: within noise"


def test_beyond_noise_and_single_seed(tmp_path):
    base = str(tmp_path)
    # lr=0.01 has the lowest loss but the lowest accuracy; lr=0.001 the highest loss but the highest accuracy
    for s, (v, acc) in enumerate([(3.0, 0.45), (3.02, 0.46)]):
        make_run(base, f"a{s}", seed=s, val_loss=v, val_acc=acc, lr=1e-3)
    for s, (v, acc) in enumerate([(2.5, 0.30), (2.51, 0.31)]):
        make_run(base, f"b{s}", seed=s, val_loss=v, val_acc=acc, lr=3e-3)
    make_run(base, "c0", seed=0, val_loss=2.4, val_acc=0.20, lr=1e-2)
    c = report.compare([base])
    by = {g.label: g for g in c.groups}
    assert stats.noise_verdict(by["lr=0.001"], by["lr=0.003"], "val/loss") == "beyond noise"
    assert stats.noise_verdict(by["lr=0.01"], by["lr=0.003"], "val/loss") == stats.SINGLE_SEED
    # the rule is exactly |mean_a - mean_b| < sd_a + sd_b (strict): sd of (1, 2, 3) is 1, so the bound is 2
    def grp(vals):
        return stats.Group("g", [discover.Run("p", f"r{i}", "complete", {"seed": i}, {}, [], {"val/loss": v})
                                 for i, v in enumerate(vals)], ())

    base_g = grp([1.0, 2.0, 3.0])
    assert base_g.mean_sd("val/loss") == (2.0, 1.0)
    assert stats.noise_verdict(base_g, grp([2.5, 3.5, 4.5]), "val/loss") == "within noise"   # 1.5 < 2
    assert stats.noise_verdict(base_g, grp([3.0, 4.0, 5.0]), "val/loss") == "beyond noise"   # 2 == 2: not within
    assert stats.noise_verdict(base_g, grp([4.0]), "val/loss") == stats.SINGLE_SEED
    header, rows = report.group_table(c.groups, "val/loss")
    best = [r for r in rows if r[-1].startswith("best")]
    assert best[0][0] == "lr=0.01" and stats.SINGLE_SEED in best[0][-1]
    assert stats.best_group(c.groups, "val/loss") is by["lr=0.01"]  # lower is better
    # accuracy: higher is better, so the best group is another one
    assert stats.best_group(c.groups, "val/acc") is by["lr=0.001"]
    assert by["lr=0.001"].mean_sd("val/acc")[0] == pytest.approx(0.455)
    header, rows = report.group_table(c.groups, "val/acc")
    verdicts = {r[0]: r[-1] for r in rows}
    assert verdicts["lr=0.001"] == "best"  # two seeds: no single-seed note
    assert verdicts["lr=0.003"] == "-0.1500: beyond noise"
    assert verdicts["lr=0.01"] == f"-0.2550: {stats.SINGLE_SEED}"


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
    assert len(c2.runs) == 6 and any("skipped 3 run(s)" in n for n in c2.notes)


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
    assert "ls0_s2" in printed and "within noise" in printed and "report.md" in printed
    md = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["val_acc_vs_time.png", "val_acc_vs_tokens.png", "val_bpb_vs_time.png", "val_bpb_vs_tokens.png",
                    "val_loss_vs_time.png", "val_loss_vs_tokens.png"]
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(embedded) == pngs
    for p in pngs:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / p).stat().st_size > 5000
    assert "| ls01_s2 |" in md and "within noise" in md and "sd_a + sd_b" in md
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


def test_non_finite_runs_are_never_best_and_shared_seeds_say_so(tmp_path):
    base = str(tmp_path)
    # lr=0.01 diverged: NaN final loss in one of its runs; it must not be ranked, whatever its other run says
    make_run(base, "nan0", seed=0, val_loss=float("nan"), lr=1e-2)
    make_run(base, "nan1", seed=1, val_loss=1.0, lr=1e-2)
    make_run(base, "ok0", seed=0, val_loss=3.0, lr=1e-3)
    make_run(base, "ok1", seed=1, val_loss=3.1, lr=1e-3)
    # two runs of lr=3e-3 with the same seed (e.g. rerun by hand): their spread is not seed noise
    make_run(base, "same_a", seed=5, val_loss=3.5, lr=3e-3)
    make_run(base, "same_b", seed=5, val_loss=3.2, lr=3e-3)
    c = report.compare([base])
    by = {g.label: g for g in c.groups}
    assert stats.best_group(c.groups, "val/loss") is by["lr=0.001"]
    assert by["lr=0.01"].mean_sd("val/loss") == (None, None)
    assert by["lr=0.003"].mean_sd("val/loss") == (pytest.approx(3.35), None) and by["lr=0.003"].n_seeds == 1
    assert stats.noise_verdict(by["lr=0.003"], by["lr=0.001"], "val/loss") == stats.SAME_SEED
    header, rows = report.group_table(c.groups, "val/loss")
    cells = {r[0]: dict(zip(header, r)) for r in rows}
    assert cells["lr=0.01"]["val/loss vs best"] == f"not ranked: {stats.NON_FINITE}"
    assert cells["lr=0.01"]["val loss mean ± sd"] == stats.NON_FINITE
    assert cells["lr=0.003"]["val/loss vs best"] == f"+0.3000: {stats.SAME_SEED}"
    assert cells["lr=0.003"]["val loss mean ± sd"] == "3.3500 (one seed)"
    assert cells["lr=0.001"]["val/loss vs best"] == "best"


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
    warn = [n for n in c.notes if "different load" in n]
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
