"""The tools an equal-time race uses: `train --threads N`, `compare --reference` (every arm judged against a chosen
arm), arms named after the runs' `--exp_name` stem, and `sweep --parallel N` (the points started together). Real CLI
subprocesses and real run directories."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import lmsprint
from lmsprint.track.report import compare, verdict_table
from lmsprint.track.stats import TOO_FEW, exp_stem

SHAPE = {"n_layer": "1", "n_embd": "16", "n_head": "2", "sequence_length": "16", "batch_size": "4", "acc_steps": "1",
         "iterations": "4", "eval_freq": "4", "eval_tokens": "64", "sample_tokens": "0", "final_eval": "fixed",
         "quiet": "true", "threads": "1"}
TINY = ["--dataset", "tiny.txt", "--data_dir", "dc"] + [x for k, v in SHAPE.items() for x in (f"--{k}", v)]


def lmsprint_cli(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "lmsprint", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def one_error_line(p, fragment):
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmsprint: error: ") and fragment in lines[0], p.stderr


# ---------------------------------------------------------------------------------------------------- --threads


@pytest.mark.slow
def test_threads_sets_torch_threads_for_the_run(corpus):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run = lmsprint.train(**SHAPE, dataset=str(corpus / "tiny.txt"), data_dir=str(corpus / "dc"),
                             results_base_folder=str(corpus / "exps_threads"), exp_name="t")
        assert torch.get_num_threads() == 1 and run.config.train.threads == 1
    finally:
        torch.set_num_threads(before)


def test_threads_refuses_a_negative_count(corpus, in_process):
    one_error_line(in_process("train", *TINY, "--threads", "-1", cwd=corpus), "--threads")


# ---------------------------------------------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def arms(corpus):
    """Two named arms x two seeds (base_s0, base_s1, lr_s0, lr_s1), trained side by side, one thread each."""
    out = corpus / "arms"
    procs = [subprocess.Popen([sys.executable, "-m", "lmsprint", "train", *TINY, *flags, "--seed", str(seed),
                               "--results_base_folder", str(out), "--exp_name", f"{arm}_s{seed}"],
                              cwd=corpus, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for arm, flags in (("base", []), ("lr", ["--lr", "3e-2"])) for seed in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    return out


@pytest.mark.slow
def test_seed_groups_are_named_by_the_exp_name_stem(arms):
    c = compare([str(arms)])
    assert sorted(g.label for g in c.groups) == ["base", "lr"] and all(g.n == 2 for g in c.groups)
    assert exp_stem("lr=0.01_seed=2", 2) == "lr=0.01" and exp_stem("m0-s1", 1) == "m0"
    assert exp_stem("runs12", 12) == "runs12" and exp_stem("a_s3", 4) == "a_s3"  # not the run's seed: kept


@pytest.mark.slow
def test_compare_reference_judges_every_group_against_it(arms):
    for spec in ("base", "base_s*", str(arms / "base_s1")):
        c = compare([str(arms)], metric="val/loss", reference=spec)
        assert c.reference.label == "base"
        header, rows = verdict_table(c.tables[0])
        assert header[-1] == "verdict" and header[2] == "Δ val/loss"
        cells = {r[0]: dict(zip(header, r)) for r in rows}
        assert cells["base"]["verdict"] == f"reference; {TOO_FEW} (n=2)"
        assert cells["lr"]["verdict"] == f"{TOO_FEW} (n=2 vs 2; 3 each needed)"  # 2 seeds: never called
    p = lmsprint_cli("compare", str(arms), "--reference", "lr_s*", "--no_report", cwd=arms)
    assert p.returncode == 0, p.stderr
    assert "val/loss against the reference arm lr:" in p.stdout


@pytest.mark.slow
def test_compare_reference_that_names_no_single_group_is_one_line(arms):
    one_error_line(lmsprint_cli("compare", str(arms), "--reference", "nope*", "--no_report", cwd=arms),
                   "--reference 'nope*' matches no arm")
    one_error_line(lmsprint_cli("compare", str(arms), "--reference", "*_s0", "--no_report", cwd=arms),
                   "matches 2 arms")


# ---------------------------------------------------------------------------------------------------- sweep


@pytest.mark.slow
def test_sweep_parallel_starts_every_run_together_and_logs_each(corpus):
    p = lmsprint_cli("sweep", "--grid", "lr=1e-3,3e-2", "--seeds", "0,1", "--parallel", "4", "--name", "race", "--",
                     *TINY, "--results_base_folder", "exps_sweep", cwd=corpus)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "in batches started together of 4" in lines[0]
    started = [i for i, line in enumerate(lines) if line.endswith(": starting")]
    finished = [i for i, line in enumerate(lines) if ": complete after " in line]
    assert len(started) == len(finished) == 4 and max(started) < min(finished)  # all running at once
    sweep_dir = corpus / "exps_sweep" / "race"
    assert sorted(f.name for f in sweep_dir.glob("*.log")) == sorted(
        f"lr={lr}_seed={s}.log" for lr in ("1e-3", "3e-2") for s in (0, 1))
    c = compare([str(sweep_dir)], reference="lr=1e-3")
    assert sorted(g.label for g in c.groups) == ["lr=1e-3", "lr=3e-2"] and c.reference.n == 2


def test_sweep_parallel_below_one_is_one_line(corpus, in_process):
    one_error_line(in_process("sweep", "--parallel", "0", "--", *TINY, cwd=corpus), "--parallel 0: must be > 0")
