"""What users see: the training output in a log file (banner, plain lines, one line per eval, final eval progress,
no carriage returns, --quiet) and the help (one default per flag, preset-aware defaults, option groups, --version,
--print_config, nanoGPT names, where a misplaced train flag belongs). Real CLI subprocesses, real files; the checks
of flags alone call the CLI's `main` in this process (conftest's `in_process`)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from lmsprint import __version__
from lmsprint.config import FLAGS
from lmsprint.config.presets import PRESETS


def lmsprint(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "lmsprint", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def one_error_line(p, fragment):
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmsprint: error: "), p.stderr
    assert fragment in lines[0], lines[0]
    return lines[0]


TINY = ["--dataset", "tiny.txt", "--data_dir", "dc", "--n_layer", "1", "--n_embd", "16", "--n_head", "2",
        "--sequence_length", "16", "--batch_size", "4", "--acc_steps", "1", "--iterations", "6", "--eval_freq", "3",
        "--log_interval", "2", "--eval_tokens", "64", "--sample_tokens", "4", "--eval_seq_prefix", "the"]


@pytest.fixture(scope="module")
def logged(corpus):
    """One tiny run with stdout/stderr going to files (not a terminal), and the same run with --quiet."""
    p = lmsprint("train", *TINY, "--results_base_folder", "exps", cwd=corpus)
    q = lmsprint("train", *TINY, "--results_base_folder", "exps_quiet", "--quiet", cwd=corpus)
    assert p.returncode == 0 and q.returncode == 0, p.stderr + q.stderr
    return p, q


@pytest.mark.slow
def test_log_file_output_banner_lines_and_no_redraws(logged):
    p, _ = logged
    out = p.stdout
    assert "\r" not in out and "\r" not in p.stderr  # no carriage-return redraws when not a terminal
    lines = out.splitlines()
    assert lines[0] == "lmsprint train: base_l1_d16_s0"
    banner = dict(re.match(r"\s+(\S+(?: dir)?)\s{2,}(.*)", line).groups() for line in lines[1:9])
    assert banner["model"].startswith("base (layernorm, gelu, learned): 1 layer, d=16, 2 heads")
    assert re.fullmatch(r"[\d,]+ total", banner["params"])
    assert banner["batch"] == "4 x 1 acc x 16 tokens = 64 tokens/step"
    assert banner["device"] == "cpu, float32, no compile"
    assert banner["length"] == "6 steps (384 tokens)"
    planned = re.fullmatch(r"every 3 steps on 64 val tokens; final: the full val split \(([\d,]+) tokens\)", banner["eval"])
    assert planned
    assert re.fullmatch(r"tiny\.txt \(gpt2\): [\d,]+ train / [\d,]+ val tokens", banner["data"])
    assert banner["run dir"].endswith("base_l1_d16_s0")
    # a plain line every log interval (steps 2, 4, 6) and one persistent line per eval (steps 3, 6)
    steps = [int(m.group(1)) for m in re.finditer(r"^step (\d+)/6 \| [\d.]+s \| train loss [\d.]+ \| [\d,]+ tok/s",
                                                   out, re.M)]
    assert steps == [2, 4, 6]
    evals = re.findall(r"^eval step (\d+) \| [\d.]+s \| train loss [\d.]+ \| val loss [\d.]+ acc [\d.]+ bpb [\d.]+ \| "
                       r"[\d,]+ tok/s$", out, re.M)
    assert evals == ["3", "6"]
    # the final eval scores nested prefixes of the split, doubling from the fixed set, one line each, with progress
    # lines inside the longer ones, all before the final table; its last prefix is the banner's plan
    prefixes = [int(n.replace(",", "")) for n in re.findall(r"^final eval: ([\d,]+) val tokens, val loss [\d.]+ "
                                                            r"\([\d.]+s\)$", out, re.M)]
    whole = int(planned.group(1).replace(",", ""))
    assert prefixes[0] == 64 and prefixes[-1] == whole
    assert all(b == 2 * a for a, b in zip(prefixes, prefixes[1:-1])) and prefixes[-2] < whole <= 2 * prefixes[-2]
    assert re.search(r"^final eval: \d+/\d+ batches \(\d+s\)$", out, re.M)
    assert out.rindex("final eval:") < out.index("final metrics:")
    assert f"eval tokens     {planned.group(1)}" in out


@pytest.mark.slow
def test_quiet_prints_only_the_final_table(logged):
    _, q = logged
    assert q.stdout.startswith("final metrics:")
    assert "lmsprint train:" not in q.stdout and "eval step" not in q.stdout and "step 2/6" not in q.stdout
    assert "\r" not in q.stderr and "tokenizing" not in q.stderr


def test_version_and_print_config(tmp_path, in_process):
    p = lmsprint("--version")  # a real start-up, once
    assert p.returncode == 0 and p.stdout.strip() == f"lmsprint {__version__}"
    p = in_process("train", "--config_format", "demo", "--learning_rate", "0.002", "--print_config")
    assert p.returncode == 0, p.stderr
    cfg = yaml.safe_load(p.stdout)
    assert cfg["config_format"] == "demo" and cfg["data"]["dataset"] == "shakespeare"
    assert cfg["optim"]["lr"] == 0.002 and cfg["model"]["n_layer"] == PRESETS["demo"]["n_layer"]
    assert list(tmp_path.iterdir()) == []  # printed, nothing run or written


def help_entries(stdout: str) -> dict:
    """{'--flag': its whole help entry on one line} of argparse's help output."""
    entries, current = {}, None
    for line in stdout.splitlines():
        m = re.match(r"^  (?:-\w(?: \S+)?, )?(--[\w-]+)", line)
        if m:
            current = m.group(1)
            entries[current] = line.strip()
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def test_full_help_one_default_per_flag_preset_aware_and_grouped(in_process):
    p = in_process("train", "--help-all")
    assert p.returncode == 0
    text = " ".join(p.stdout.split())  # argparse wraps lines
    for name in FLAGS:
        m = re.search(rf"--{name}\b[^-]*?(?= --[a-z]|$)", text)
        if m:
            assert m.group(0).count("(default:") <= 1, m.group(0)
    assert text.count("(default: None)") == 0 and "(default: the dataset's own)" in text
    assert "(default: slimpajama; --config_format demo: shakespeare)" in text
    assert "(default: 12; --config_format demo: 4)" in text
    groups = re.findall(r"^(\S.*) options:$", p.stdout, re.M)
    for g in ("data", "model", "attention", "MoE (mixture of experts)", "optimizer", "schedule", "training",
              "evaluation"):
        assert g in groups
    sched = p.stdout.split("schedule options:")[1].split("options:")[0]
    assert "--warmup_percent" in sched and "--scheduler" in sched and "--lr " not in sched


def test_every_preset_default_is_shown(in_process):
    entries = help_entries(in_process("train", "--help-all").stdout)
    shown = 0
    for preset, values in PRESETS.items():
        for name, value in values.items():
            _, f, _ = FLAGS[name]
            if preset != "base" and value != PRESETS["base"].get(name, f.default):
                v = f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) \
                    else str(value)
                assert f"--config_format {preset}: {v}" in entries[f"--{name}"], (preset, name)
                shown += 1
    assert shown > 20
    # a default the help words itself keeps its words; the val split is the dataset's own under every preset, so
    # no preset value follows it
    assert entries["--val_fraction"].endswith(
        "(default: the dataset's own, under every preset: 0.05 for shakespeare, 0.005 for other sources)")


def test_short_help_lists_the_most_used_flags_and_the_groups(in_process):
    p = in_process("train", "--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: lmsprint train [OPTIONS]")
    flags = list(help_entries(p.stdout))
    common = [n for n, (path, f, tp) in FLAGS.items() if f.metadata.get("common")]
    assert flags == ["--help", "--help-all", "--config", "--resume", "--resume_override", "--print_config",
                     *[f"--{n}" for n in common]]
    assert len(flags) - 2 == 20  # the 20 flags people use most (and the two help switches)
    assert len(p.stdout.splitlines()) < 90  # was 351 lines
    text = " ".join(p.stdout.split())
    assert "(default: slimpajama; --config_format demo: shakespeare)" in text  # preset defaults here too
    for key in ("run", "data", "model", "attention", "moe", "optimizer", "schedule", "training", "evaluation",
                "checkpoints", "logging"):
        assert re.search(rf"\b{key} \(\d+\)", text), key
    assert "lmsprint train --help GROUP" in text and "lmsprint train --help-all" in text


def test_help_group_lists_one_group(in_process):
    p = in_process("train", "--help", "optimizer")
    assert p.returncode == 0 and "optimizer options:" in p.stdout
    flags = set(help_entries(p.stdout))
    assert flags == {f"--{n}" for n, (path, f, tp) in FLAGS.items() if path[0] == "optim" and not f.metadata["group"]}
    assert "--warmup_percent" in in_process("train", "--help", "sched").stdout  # a unique prefix is enough
    assert "--moe_num_experts" in in_process("train", "--help", "MoE").stdout
    one_error_line(in_process("train", "--help", "optimiser"), "--help 'optimiser' is not a group; use one of: ")
    one_error_line(in_process("train", "--help", "m"), "--help 'm' matches several groups")
    p = in_process("eval", "--help", "downstream")
    assert p.returncode == 0 and "--batch_size" in p.stdout and "--eval_tokens" not in p.stdout


def test_nanogpt_names_are_aliases_or_answered(tmp_path, in_process):
    p = in_process("train", "--learning_rate", "0.01", "--max_iters", "7", "--block_size", "64", "--out_dir", "o",
                   "--eval_interval", "5", "--gradient_accumulation_steps", "2", "--print_config")
    assert p.returncode == 0, p.stderr
    cfg = yaml.safe_load(p.stdout)
    assert (cfg["optim"]["lr"], cfg["train"]["iterations"], cfg["model"]["sequence_length"]) == (0.01, 7, 64)
    assert (cfg["train"]["results_base_folder"], cfg["train"]["eval_freq"], cfg["train"]["acc_steps"]) == ("o", 5, 2)
    # a config file may use them too
    (tmp_path / "c.yaml").write_text("learning_rate: 0.02\nmax_iters: 9\n")
    p = in_process("train", "--config", "c.yaml", "--print_config")
    assert p.returncode == 0, p.stderr
    assert yaml.safe_load(p.stdout)["optim"]["lr"] == 0.02 and yaml.safe_load(p.stdout)["train"]["iterations"] == 9
    one_error_line(in_process("train", "--eval_iters", "20"), "unknown flag 'eval_iters'; use --eval_tokens")
    one_error_line(in_process("train", "--warmup_iters", "20"), "use --warmup_percent")
    one_error_line(in_process("train", "--min_lr", "1e-4"), "use --lr: the final lr is")


def test_misplaced_train_flags_say_where_they_belong(in_process):
    line = one_error_line(in_process("sweep", "--dataset", "x"), "--dataset is a train flag: put it after `--`")
    assert "did you mean --dataset" not in line
    one_error_line(in_process("prepare", "--progress", "false"), "prepare has no --progress (it is a train flag)")
    one_error_line(in_process("compare", "--lr", "1", "x"), "compare has no --lr (it is a train flag)")
    # a typo still gets the closest flag of that command, never the flag typed
    one_error_line(in_process("sweep", "--grd", "lr=1"), "did you mean --grid?")
    one_error_line(in_process("train", "--n_layers", "2"), "did you mean --n_layer?")


CONSOLE_SCRIPT = """
import time
from lmsprint.config import build_config
from lmsprint.training.report import Console
class Clock:
    budget, iterations, train_time, step = None, 3, 0.0, 0
c = Console(build_config({}), True)
c.start(Clock())
for i in range(3):
    time.sleep(0.05)
    c.advance()
    if i == 1:
        c.eval_done(2, {"val/loss": 3.0, "val/acc": 0.25, "val/bpb": 1.5})
c.close()
"""


@pytest.mark.slow
def test_terminal_gets_a_redrawn_bar_and_persistent_eval_lines():
    """On a terminal (a real pseudo-terminal of 100 columns) the bar redraws with carriage returns and the eval line
    is printed above it, on its own line."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    p = subprocess.Popen([sys.executable, "-c", CONSOLE_SCRIPT], stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert p.wait(timeout=120) == 0
    out = b"".join(chunks).decode(errors="replace")
    assert "\r" in out and "train:" in out and "3/3" in out
    lines = [line.rstrip("\r").split("\r")[-1] for line in out.split("\n")]  # what stays on screen per line
    assert any(line.startswith("eval step 2 | ") and "val loss 3.0000 acc 0.2500 bpb 1.5000" in line for line in lines)


# ---------------------------------------------------------------------------------------------------- diverged


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory, shakespeare_manifest):
    """A tiny run at lr 3 without warmup: its final val loss ends far above ln(vocab_size), every number finite."""
    import contextlib
    import io

    from lmsprint.cli import main

    root = tmp_path_factory.mktemp("diverged")
    args = ["train", "--dataset", shakespeare_manifest.dir, "--n_layer", "1", "--n_embd", "16", "--n_head", "2",
            "--sequence_length", "16", "--batch_size", "4", "--acc_steps", "1", "--iterations", "6", "--eval_freq", "3",
            "--eval_tokens", "256", "--final_eval", "fixed", "--sample_tokens", "0", "--lr", "3", "--scheduler", "none",
            "--threads", "1", "--results_base_folder", str(root / "exps"), "--exp_name", "hot"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    assert code == 0, err.getvalue()
    return root / "exps" / "hot", out.getvalue()


def test_a_run_worse_than_a_uniform_guess_is_marked_diverged(diverged_run):
    import json
    import math

    run_dir, out = diverged_run
    s = json.loads((run_dir / "summary.json").read_text())
    loss = s["final"]["val/loss"]
    assert math.isfinite(loss) and loss > math.log(50304)
    assert s["status"] == "complete" and s["diverged"] is True and s["uniform_loss"] == pytest.approx(math.log(50304))
    row = re.search(r"^  diverged +final val/loss ([\d.]+) is above 10\.8258 = ln\(vocab_size\)", out, re.M)
    assert row and float(row.group(1)) == pytest.approx(loss, abs=1e-4), out


def test_huge_perplexity_is_printed_in_scientific_notation(diverged_run):
    run_dir, out = diverged_run
    ppl = re.search(r"^  val/perplexity +(\S+)$", out, re.M).group(1)
    assert re.fullmatch(r"\d\.\d{3}e\+\d+", ppl), ppl  # e.g. 1.234e+40, never a 40-digit integer


@pytest.mark.slow
def test_compare_shows_diverged_runs(diverged_run, logged, corpus, in_process, tmp_path):
    import csv

    run_dir, _ = diverged_run
    healthy = next(d for d in (corpus / "exps").iterdir() if d.is_dir())
    assert yaml.safe_load((healthy / "summary.json").read_text())["diverged"] is False
    p = in_process("compare", str(run_dir), str(healthy), "--out", "rep")
    assert p.returncode == 0, p.stderr
    table = {line.split()[0]: line.split()[1] for line in p.stdout.splitlines() if line.startswith(("hot", "base_"))}
    assert table["hot"] == "diverged" and table[healthy.name] == "complete", p.stdout
    assert "diverged (1 run: a complete run whose final val loss is above ln(vocab_size)" in p.stdout
    with open(tmp_path / "rep" / "runs.csv") as fh:
        rows = {r["run"]: r for r in csv.DictReader(fh)}
    assert rows["hot"]["diverged"] == "true" and rows["hot"]["status"] == "complete"
    assert rows[healthy.name]["diverged"] == "false"
