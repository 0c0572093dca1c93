"""Tests of `lmsprint sweep` (grid parsing, validation, resumability) and of compare/sinks on tiny real runs.

The real runs are `python -m lmsprint train` subprocesses on shakespeare-char (1 layer, 32 wide, 6 steps) with
TensorBoard and offline wandb on, shared by the tests of this module."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from lmsprint.cli import main
from lmsprint.errors import UserError
from lmsprint.track import report, stats
from lmsprint.track import sweep as S

TINY = ["--config_format", "demo", "--dataset", "shakespeare-char", "--n_layer", "1", "--n_embd", "32", "--n_head",
        "4", "--sequence_length", "32", "--batch_size", "8", "--vocab_size", "128", "--iterations", "6",
        "--eval_freq", "3", "--eval_tokens", "512", "--final_eval", "fixed", "--time_budget", "0",
        "--sample_tokens", "8", "--progress", "false", "--log_interval", "2"]


# ---------------------------------------------------------------------------------------------------- no training


def test_grid_parsing_and_validation():
    assert S.parse_grid(["label_smoothing=0,0.1", "lr=1e-3"]) == {"label_smoothing": ["0", "0.1"], "lr": ["1e-3"]}
    with pytest.raises(UserError, match=r"unknown grid key 'label_smothing'; did you mean --label_smoothing"):
        S.parse_grid(["label_smothing=0,0.1"])
    with pytest.raises(UserError, match="--seeds"):
        S.parse_grid(["seed=0,1"])
    with pytest.raises(UserError, match="FLAG=V1,V2"):
        S.parse_grid(["lr"])
    with pytest.raises(UserError, match="not a number"):
        S.parse_grid(["lr=fast"])
    assert S.parse_seeds("0,1,2") == [0, 1, 2]
    with pytest.raises(UserError, match="integers"):
        S.parse_seeds("a,b")
    points = S.plan({"label_smoothing": ["0", "0.1"], "moe_num_experts": ["0", "4"]}, [0, 1])
    assert len(points) == 8
    assert points[0].name == "label_smoothing=0_moe_num_experts=0_seed=0"
    assert len({p.name for p in points}) == 8
    assert [p.seed for p in points] == [0, 0, 0, 0, 1, 1, 1, 1]  # seed-major


def test_batches_start_whole_seeds_together():
    points = S.plan({"lr": ["1e-3", "3e-3", "1e-2"]}, [0, 1, 2])
    by = lambda bs: [[(p.values["lr"], p.seed) for p in b] for b in bs]  # noqa: E731
    assert by(S.batches(points, 1)) == [[(p.values["lr"], p.seed)] for p in points]  # one at a time
    three = by(S.batches(points, 3))
    assert three == [[(lr, s) for lr in ("1e-3", "3e-3", "1e-2")] for s in (0, 1, 2)]  # every arm of a seed
    assert by(S.batches(points, 7)) == [three[0] + three[1], three[2]]  # whole seeds only: 2 of them per batch
    assert by(S.batches(points, 2))[0] == [("1e-3", 0), ("3e-3", 0)]  # fewer than the arms: warned by the CLI


def test_sweep_cli_errors_are_one_line(tmp_path, capsys):
    base = str(tmp_path / "exps")
    cases = [(["--grid", "labl_smoothing=0"], [], "did you mean --label_smoothing"),
             (["--grid", "lr=1e-3"], ["--seed", "3"], "--seeds"),
             (["--grid", "n_head=3"], ["--config_format", "demo"], "not divisible"),
             (["--grid", "lr=1e-3"], ["--lrr", "3"], "did you mean --lr"),
             (["--grid", "lr=1e-3", "--seeds", "x"], [], "not an integer")]
    for argv, train, msg in cases:
        assert main(["sweep", *argv, "--", *train, "--results_base_folder", base]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
    assert not os.path.exists(base)  # nothing was started


@pytest.mark.parametrize("name", [".", "..", "", "a/b", "../up", "latest"])
def test_a_name_that_is_no_plain_folder_name_is_refused(in_process, tmp_path, name):
    """`--name .` would make the results folder itself the sweep folder, `..` its parent: refused in one line."""
    base = tmp_path / "exps" / "inner"
    base.mkdir(parents=True)
    r = in_process("sweep", "--grid", "label_smoothing=0,0.1", "--seeds", "0", "--name", name, "--", *TINY,
                   "--results_base_folder", base)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"--name '{name}' must be a plain folder name" in r.stderr, r.stderr
    assert not list(tmp_path.rglob(S.SWEEP_FILE)) and not os.listdir(base)  # nothing written anywhere


def test_dry_run_plans_commands(tmp_path, capsys):
    base = str(tmp_path / "exps")
    assert main(["sweep", "--grid", "label_smoothing=0,0.1", "--seeds", "0,1", "--dry_run", "--",
                 "--config_format", "demo", "--results_base_folder", base]) == 0
    out = capsys.readouterr().out
    assert "4 runs (2 grid points x 2 seeds)" in out and "seed-major" in out
    # seed-major: every arm's seed 0, then every arm's seed 1 (no arm runs all its seeds first)
    assert re.findall(r"--exp_name (\S+)", out) == ["label_smoothing=0_seed=0", "label_smoothing=0.1_seed=0",
                                                    "label_smoothing=0_seed=1", "label_smoothing=0.1_seed=1"]
    assert "--exp_name label_smoothing=0.1_seed=1" in out and f"--results_base_folder {base}/sweep-label_smoothing" in out
    assert not os.path.exists(base)


def test_parallel_below_the_number_of_arms_warns_in_one_line(tmp_path, capsys):
    base = str(tmp_path / "exps")
    assert main(["sweep", "--grid", "lr=1e-3,3e-3,1e-2", "--parallel", "2", "--dry_run", "--",
                 "--config_format", "demo", "--results_base_folder", base]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--parallel 2 is fewer than the 3 arms" in err[0] and "use --parallel 3" in err[0]


# ---------------------------------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    base = str(root / "exps")
    argv = ["sweep", "--grid", "label_smoothing=0,0.1", "--seeds", "0", "--name", "ls", "--",
            *TINY, "--data_dir", str(root / "data"), "--results_base_folder", base, "--tensorboard", "--wandb"]
    return {"rc": _offline_main(argv), "dir": os.path.join(base, "ls"), "argv": argv}


def _offline_main(argv) -> int:
    """main(argv) with wandb offline in this process and in the training subprocesses it starts."""
    env = dict(os.environ)
    os.environ.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    try:
        return main(argv)
    finally:
        os.environ.clear()
        os.environ.update(env)


def _summary(d):
    with open(os.path.join(d, "summary.json")) as fh:
        return json.load(fh)


@pytest.mark.slow
def test_sweep_runs_every_point_in_its_own_dir(sweep):
    assert sweep["rc"] == 0
    names = sorted(d for d in os.listdir(sweep["dir"]) if os.path.isdir(os.path.join(sweep["dir"], d)))
    assert names == ["label_smoothing=0.1_seed=0", "label_smoothing=0_seed=0"]
    for n in names:
        s = _summary(os.path.join(sweep["dir"], n))
        assert s["status"] == "complete" and s["iterations_done"] == 6
    assert json.load(open(os.path.join(sweep["dir"], "sweep.json")))["seeds"] == [0]


@pytest.mark.slow
def test_compare_real_runs_table_and_report(sweep, tmp_path):
    c = report.compare([sweep["dir"]])
    assert c.diff == ["label_smoothing"]  # seed, exp_name, folders are the same or ignored
    header, rows = report.run_table(c.runs, c.diff)
    for r, row in zip(c.runs, rows):
        cells = dict(zip(header, row))
        s = _summary(r.path)
        assert cells["val loss"] == f"{s['final']['val/loss']:.4f}" and cells["val bpb"] == f"{s['final']['val/bpb']:.4f}"
        assert cells["status"] == "complete" and cells["tokens"] == "1.54k"  # 6 steps x 8 x 32
    assert [g.n for g in c.groups] == [1, 1]
    assert stats.TOO_FEW in report.text_table(*report.verdict_table(c.tables[0]))
    # real runs record the val sets they were scored on: both on the same one, so one table
    assert len(c.tables) == 1 and c.tables[0].valset.recorded and c.tables[0].valset.covers == "fixed set"
    out = tmp_path / "rep"
    report.write_report(c, str(out), [sweep["dir"]])
    md = (out / "report.md").read_text()
    for p in ("val_bpb_vs_time.png", "val_bpb_vs_tokens.png", "val_acc_vs_time.png", "val_acc_vs_tokens.png"):
        assert (out / p).is_file() and f"]({p})" in md


@pytest.mark.slow
def test_real_run_tensorboard_and_wandb_offline(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from test_track_sinks import wandb_offline_readback

    d = os.path.join(sweep["dir"], "label_smoothing=0.1_seed=0")
    rows = [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]
    assert all("iter" in r for r in rows)
    val_rows = [r for r in rows if "val/loss" in r]
    assert [r["iter"] for r in val_rows] == [3, 6]
    acc = EventAccumulator(os.path.join(d, "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val/loss")] == [3, 6]
    assert acc.Scalars("val/loss")[-1].value == pytest.approx(val_rows[-1]["val/loss"], rel=1e-6)
    wb = wandb_offline_readback(d)
    assert wb["run"].display_name == "label_smoothing=0.1_seed=0"
    assert wb["config"]["train"]["label_smoothing"] == 0.1
    hist = [h for h in wb["history"] if "val/loss" in h]
    assert [h["iter"] for h in hist] == [3, 6] and hist[-1]["val/bpb"] == pytest.approx(val_rows[-1]["val/bpb"])
    s = _summary(d)
    assert wb["summary"]["final/val/loss"] == pytest.approx(s["final"]["val/loss"])
    assert any("samples/_type" in h for h in wb["history"])


@pytest.mark.slow
def test_sweep_restart_skips_finished_and_resumes_interrupted(sweep, capfd):
    done = os.path.join(sweep["dir"], "label_smoothing=0_seed=0")
    cut = os.path.join(sweep["dir"], "label_smoothing=0.1_seed=0")
    # what `lmsprint train` leaves behind when interrupted: summary status "failed", checkpoint kept
    s = _summary(cut)
    s.update(status="failed", error="interrupted")
    with open(os.path.join(cut, "summary.json"), "w") as fh:
        json.dump(s, fh)
    before = os.path.getmtime(os.path.join(done, "summary.json"))
    capfd.readouterr()
    assert _offline_main(sweep["argv"]) == 0
    out = capfd.readouterr().out
    assert "label_smoothing=0_seed=0: complete in" in out and "skipped" in out
    assert f"resuming {cut}" in out and "--resume" in out
    assert os.path.getmtime(os.path.join(done, "summary.json")) == before  # untouched
    assert _summary(cut)["status"] == "complete"
    names = sorted(d for d in os.listdir(sweep["dir"]) if os.path.isdir(os.path.join(sweep["dir"], d)))
    assert names == ["label_smoothing=0.1_seed=0", "label_smoothing=0_seed=0"]  # no run started over
    assert stats.TOO_FEW in out  # the compare table at the end


@pytest.mark.slow
def test_a_failing_run_does_not_stop_the_sweep(tmp_path, capfd):
    base = str(tmp_path / "exps")
    missing = [str(tmp_path / "no_such_corpus_a.txt"), str(tmp_path / "no_such_corpus_b.txt")]
    rc = main(["sweep", "--grid", "dataset=" + ",".join(missing), "--name", "bad", "--", *TINY,
               "--data_dir", str(tmp_path / "data"), "--results_base_folder", base])
    out, err = capfd.readouterr()
    assert rc == 1
    assert "[sweep 1/2]" in out and "[sweep 2/2]" in out and out.count("FAILED") == 2
    assert "2 runs failed" in err


@pytest.mark.slow
def test_values_that_normalise_alike_get_their_own_runs(tmp_path):
    """`a_b.txt` and `a-b.txt` both normalise to `a-b.txt`: each gets its own run name (a short hash of the value),
    so the second is never skipped as the first's "complete" run; values that do not collide keep plain names."""
    points = S.plan({"dataset": ["a_b.txt", "a-b.txt", "c.txt"]}, [0])
    names = [p.name for p in points]
    assert len(set(names)) == 3 and names[2] == "dataset=c.txt_seed=0"
    assert all(re.fullmatch(r"dataset=a-b\.txt-[0-9a-f]{6}_seed=0", n) for n in names[:2])
    assert S.plan({"dataset": ["a_b.txt", "a-b.txt"]}, [0])[0].name == names[0]  # stable across reruns
    # the real CLI plans two runs with two names
    for f in ("a_b.txt", "a-b.txt"):
        (tmp_path / f).write_text("hello world\n\n" * 50)
    p = subprocess.run([sys.executable, "-m", "lmsprint", "sweep", "--grid", "dataset=a_b.txt,a-b.txt", "--dry_run",
                        "--", "--results_base_folder", "exps"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    planned = re.findall(r"--exp_name (\S+)", p.stdout)
    assert len(planned) == 2 and len(set(planned)) == 2 and set(planned) == set(names[:2])
    # and a nanoGPT name works as a grid key
    assert S.parse_grid(["learning_rate=1e-3,3e-3"]) == {"lr": ["1e-3", "3e-3"]}


@pytest.mark.slow
def test_parallel_sweep_starts_each_seeds_arms_together_and_records_it(tmp_path, capfd):
    base = str(tmp_path / "exps")
    argv = ["sweep", "--grid", "label_smoothing=0,0.1", "--seeds", "0,1", "--name", "par", "--parallel", "2", "--",
            *TINY, "--sample_tokens", "0", "--threads", "1", "--data_dir", str(tmp_path / "data"),
            "--results_base_folder", base]
    assert main(argv) == 0
    out = capfd.readouterr().out
    d = os.path.join(base, "par")
    launches = json.load(open(os.path.join(d, "sweep.json")))["launches"]
    assert [b["runs"] for b in launches] == [["label_smoothing=0_seed=0", "label_smoothing=0.1_seed=0"],
                                             ["label_smoothing=0_seed=1", "label_smoothing=0.1_seed=1"]]
    assert "in batches started together of 2" in out
    for name in launches[0]["runs"] + launches[1]["runs"]:
        assert os.path.isfile(os.path.join(d, name + ".log"))
    c = report.compare([d])
    together = S.started_together_fn()
    by = {r.name: r for r in c.runs}
    assert together(by["label_smoothing=0_seed=0"], by["label_smoothing=0.1_seed=0"])
    assert not together(by["label_smoothing=0_seed=0"], by["label_smoothing=0.1_seed=1"])
    # the record survives a rerun of the same command (all runs complete: nothing is launched)
    assert main(argv) == 0
    assert json.load(open(os.path.join(d, "sweep.json")))["launches"] == launches
