"""Fault injection through the real CLI: bad run names, unwritable and full disks, stop signals, a second writer,
NaN, resumes that would change the run, unsafe checkpoints. Real `python -m lmsprint` subprocesses, real files,
real signals; no mocks. Every failure must be one `lmsprint: ...` line on stderr, with the last good checkpoint
kept and nothing the user wrote modified.

The tiny runs share one prepared `shakespeare-char` (module fixture). Disk-full cases use a size-limited tmpfs
(needs root, skipped otherwise) or RLIMIT_FSIZE (works for anyone).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from lmsprint import rundir
from lmsprint.export import load_weights

TIMING = ("time/", "perf/")
ITERS = 150


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def cli(*args, cwd, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "lmsprint", *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout, **kw)


def start(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "lmsprint", *map(str, args)], cwd=cwd, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def one_line_error(p, code=2, prefix="lmsprint: error: "):
    """The process exited with `code` and its stderr ends in exactly one line starting with `prefix`, no traceback."""
    err = p.stderr if isinstance(p.stderr, str) else p.stderr.read()
    assert p.returncode == code, (p.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    pieces = [x for line in err.split("\n") for x in line.split("\r")]  # progress bars redraw with \r
    said = [x[x.index("lmsprint: "):] for x in pieces if "lmsprint: " in x]
    assert len(said) == 1 and said[0].startswith(prefix), err[-3000:]
    return said[0]


def flags(data, base, name, iterations=ITERS, *extra):
    return ["train", "--dataset", data, "--results_base_folder", base, "--exp_name", name, "--device", "cpu",
            "--n_layer", 1, "--n_embd", 32, "--n_head", 2, "--vocab_size", 128, "--sequence_length", 32,
            "--batch_size", 4, "--acc_steps", 2, "--iterations", iterations, "--eval_freq", 25, "--log_interval", 3,
            "--eval_tokens", 256, "--final_eval", "fixed", "--sample_tokens", 4, "--dropout", 0.1,
            "--ckpt_interval", "1s", "--progress", "false", *extra]


def ckpt(run_dir):
    return os.path.join(run_dir, "checkpoints", "latest.pt")


def wait_for(pred, proc, timeout=240):
    deadline = time.time() + timeout
    while not pred():
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def wait_for_checkpoint(proc, run_dir, newer_than=0.0):
    wait_for(lambda: os.path.exists(ckpt(run_dir)) and os.path.getmtime(ckpt(run_dir)) > newer_than, proc)


def load(run_dir):
    return torch.load(ckpt(run_dir), weights_only=True)


def rows(run_dir):
    with open(rundir.metrics_path(run_dir)) as fh:
        out = [json.loads(line) for line in fh]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in out]


def summary(run_dir):
    with open(rundir.summary_path(run_dir)) as fh:
        return json.loads(fh.read(), parse_constant=lambda c: pytest.fail(f"bare {c} in summary.json"))


def _file_limit(limit):
    """preexec_fn: a write past `limit` bytes fails with EFBIG (Python ignores SIGXFSZ), like a full disk."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def tensors_equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def data(char_data):
    """shakespeare-char prepared once (conftest): the path of the prepared directory (usable as --dataset)."""
    return char_data


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run of ITERS steps."""
    cwd = tmp_path_factory.mktemp("faults_ref")
    p = cli(*flags(data, cwd / "exps", "run"), cwd=cwd)
    assert p.returncode == 0, p.stderr[-3000:]
    return str(cwd / "exps" / "run")


# ------------------------------------------------------------------------------------------- class 3: paths


@pytest.mark.slow
@pytest.mark.parametrize("name", ["latest", "a/b", "../../elsewhere", ".."])
def test_run_names_that_are_no_plain_folder_are_refused(data, tmp_path, name):
    base = tmp_path / "results" / "exps"
    base.mkdir(parents=True)
    (base / "latest").write_text("old\n")  # an existing pointer stays as it is
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    p = cli(*flags(data, base, name, 3), cwd=tmp_path)
    assert "--exp_name" in one_line_error(p)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (base / "latest").read_text() == "old\n"


@pytest.mark.slow
def test_data_dir_naming_a_file_and_an_unwritable_results_folder(data, tmp_path):
    f = tmp_path / "afile"
    f.write_text("mine\n")
    p = cli("prepare", "--dataset", "shakespeare-char", "--data_dir", f, cwd=tmp_path)
    one_line_error(p)
    assert f.read_text() == "mine\n"

    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes through file modes: use a read-only mount
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1M", "tmpfs", str(ro)]).returncode:
            pytest.skip("cannot mount a read-only tmpfs")
    else:
        ro.chmod(0o555)
    try:
        p = cli(*flags(data, ro / "exps", "run", 3), cwd=tmp_path)
        assert "results_base_folder" in one_line_error(p)
        p = cli(*flags(data, ro, "run", 3), cwd=tmp_path)
        assert "results_base_folder" in one_line_error(p)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)])


def test_disk_full_during_prepare_is_one_line(tmp_path):
    p = cli("prepare", "--dataset", "shakespeare-char", "--data_dir", tmp_path / "d", cwd=tmp_path,
            preexec_fn=_file_limit(1 << 20))
    one_line_error(p)


@pytest.mark.slow
def test_a_weights_file_that_cannot_be_written_is_an_os_error_and_the_old_file_is_kept(tmp_path):
    """safetensors reports a failed write as its own SafetensorError; lmsprint raises the OSError it is, with the
    file's name, and leaves the previous model.safetensors and no temporary file."""
    path = tmp_path / "model.safetensors"
    code = (
        "import errno, sys, torch\n"
        "from lmsprint.export import save_weights\n"
        "save_weights(sys.argv[1], {'w': torch.zeros(4)})\n"
        "try:\n"
        "    save_weights(sys.argv[1], {'w': torch.ones(1 << 16)})\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno], e.filename == sys.argv[1])\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=_env(),
                       preexec_fn=_file_limit(64 << 10), timeout=120)
    assert p.returncode == 0 and p.stdout.split() == ["EFBIG", "True"], (p.stdout, p.stderr[-2000:])
    assert torch.equal(load_weights(str(path))[0]["w"], torch.zeros(4))
    assert os.listdir(tmp_path) == ["model.safetensors"]


_SAVE_UNDER_A_FILE_LIMIT = """
import os, sys, torch
from lmsprint.errors import CheckpointError
from lmsprint.files import atomic_copy
from lmsprint.training import sharded, state
out, n = sys.argv[1], int(sys.argv[2])
state.save_checkpoint(os.path.join(out, "latest.pt"), {"model": {}, "step": 1})
model = torch.nn.Linear(n, n)
opt = torch.optim.AdamW(model.parameters())
model(torch.ones(1, n)).sum().backward()
opt.step()
for what, save in [("pt", lambda: state.save_checkpoint(os.path.join(out, "latest.pt"),
                                                        {"model": model.state_dict(), "step": 2})),
                   ("shards", lambda: sharded.save_shards(model, opt, os.path.join(out, "shards")))]:
    try:
        save()
        print(what, "saved")
    except CheckpointError as e:
        print(what, "CheckpointError", str(e).count(chr(10)))
try:
    atomic_copy(os.path.join(out, "big"), os.path.join(out, "step_1.pt"))
except OSError as e:
    print("copy", e.errno)
"""


@pytest.mark.slow
@pytest.mark.parametrize("n", [32, 64, 512])
def test_a_checkpoint_too_big_for_the_disk_is_a_checkpoint_error_whatever_torch_raises(tmp_path, n):
    """torch.save and torch.distributed.checkpoint report a short write as RuntimeError "unexpected pos N vs M"
    (or "file write failed"), DCP wrapped in its CheckpointException, a BaseException. Both are a one-line
    CheckpointError, whichever write fails first; the checkpoint before stays loadable and no temporary is left.
    The copy kept as step_N.pt is atomic too: a failed copy leaves the file before it whole."""
    (tmp_path / "big").write_bytes(b"x" * 8192)
    (tmp_path / "step_1.pt").write_bytes(b"old")
    p = subprocess.run([sys.executable, "-c", _SAVE_UNDER_A_FILE_LIMIT, str(tmp_path), str(n)], capture_output=True,
                       text=True, env=_env(), preexec_fn=_file_limit(2048), timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ["pt", "CheckpointError", "0", "shards", "CheckpointError", "0", "copy",
                                str(errno.EFBIG)], p.stdout
    assert torch.load(tmp_path / "latest.pt", weights_only=True)["step"] == 1
    assert (tmp_path / "step_1.pt").read_bytes() == b"old"
    assert [f for f in os.listdir(tmp_path) if ".tmp" in f] == []


@pytest.mark.slow
def test_export_that_cannot_write_its_weights_is_one_line_and_leaves_no_folder(reference, tmp_path):
    out = tmp_path / "hf"
    p = cli("export", reference, out, cwd=tmp_path, preexec_fn=_file_limit(16 << 10))
    last = one_line_error(p)
    assert "model.safetensors" in last and "File too large" in last, last
    assert os.listdir(tmp_path) == []  # neither the folder nor its temporary twin


@pytest.mark.slow
def test_disk_full_at_a_checkpoint_keeps_the_last_good_one_and_resume_finishes(data, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mnt)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        run_dir = str(mnt / "exps" / "run")
        proc = start(*flags(data, mnt / "exps", "run", 100000), cwd=tmp_path)
        wait_for_checkpoint(proc, run_dir)
        proc.send_signal(signal.SIGSTOP)  # fill the disk while it is frozen, between two checkpoints
        good = load(run_dir)
        filler = mnt / "filler"
        with open(filler, "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        proc.send_signal(signal.SIGCONT)
        proc.wait(timeout=240)
        last = one_line_error(proc)
        assert "space" in last or "full" in last, last
        after = load(run_dir)  # the last good checkpoint: intact, loadable, unchanged or a later complete one
        assert after["step"] >= good["step"]
        assert not [f for f in os.listdir(os.path.dirname(ckpt(run_dir))) if ".tmp" in f]
        assert rundir.status(run_dir) in ("interrupted", "failed")
        filler.unlink()  # space freed: the run continues from that checkpoint and finishes
        end = after["step"] + 5
        p = cli("train", "--resume", run_dir, "--results_base_folder", mnt / "exps", "--resume_override",
                "iterations", "--iterations", end, cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
        assert summary(run_dir)["status"] == "complete" and load(run_dir)["step"] == end
        assert load_weights(rundir.weights_path(run_dir))[1]["step"] == str(end)
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


# ------------------------------------------------------------------------------- class 4 + 7: signals, lock


@pytest.mark.slow
def test_sighup_then_sigint_then_resume_is_bit_identical_and_a_live_run_is_locked(data, reference, tmp_path):
    base = tmp_path / "exps"
    run_dir = str(base / "run")
    cmd = flags(data, base, "run")
    proc = start(*cmd, cwd=tmp_path)
    wait_for_checkpoint(proc, run_dir)
    proc.send_signal(signal.SIGSTOP)  # a frozen process still holds the lock
    try:
        second = cli("train", "--resume", run_dir, "--results_base_folder", base, cwd=tmp_path)
        assert "in use by another process" in one_line_error(second)
        assert rundir.status(run_dir) == "running"
    finally:
        proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGHUP)
    proc.wait(timeout=240)
    line = one_line_error(proc, code=128 + signal.SIGHUP, prefix="lmsprint: stopped: SIGHUP")
    s = summary(run_dir)
    step1 = load(run_dir)["step"]
    assert s["status"] == "interrupted" and s["iterations_done"] == step1 and f"step {step1}" in line
    assert 0 < step1 < ITERS

    t0 = os.path.getmtime(ckpt(run_dir))
    proc = start("train", "--resume", "latest", "--results_base_folder", base, cwd=tmp_path)
    wait_for_checkpoint(proc, run_dir, newer_than=t0)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=240)
    one_line_error(proc, code=128 + signal.SIGINT, prefix="lmsprint: stopped: SIGINT")
    assert summary(run_dir)["status"] == "interrupted" and rundir.status(run_dir) == "interrupted"
    assert load(run_dir)["step"] > step1

    p = cli("train", "--resume", run_dir, "--results_base_folder", base, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert summary(run_dir)["status"] == "complete" and rundir.status(run_dir) == "complete"
    assert rows(run_dir) == rows(reference)
    a, b = load(run_dir), load(reference)
    assert tensors_equal(a["model"], b["model"]) and tensors_equal(a["optimizer"], b["optimizer"])


@pytest.mark.slow
def test_sigterm_stops_with_a_checkpoint_and_kill_9_before_the_first_checkpoint_is_failed(data, tmp_path):
    base = tmp_path / "exps"
    run_dir = str(base / "early")
    proc = start(*flags(data, base, "early", 100000, "--eval_freq", 100000, "--ckpt_interval", "1h"), cwd=tmp_path)
    wait_for(lambda: os.path.exists(rundir.metrics_path(run_dir)) and os.path.getsize(rundir.metrics_path(run_dir)),
             proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert summary(run_dir)["status"] == "running" and not os.path.exists(ckpt(run_dir))
    assert rundir.status(run_dir) == "failed"  # died: the lock went with the process
    p = cli("train", "--resume", run_dir, "--results_base_folder", base, cwd=tmp_path)
    assert "before its first checkpoint" in one_line_error(p)

    proc = start(*flags(data, base, "term", 100000, "--eval_freq", 100000, "--ckpt_interval", "1h"), cwd=tmp_path)
    run_dir = str(base / "term")
    wait_for(lambda: os.path.exists(rundir.metrics_path(run_dir)) and os.path.getsize(rundir.metrics_path(run_dir)),
             proc)
    proc.send_signal(signal.SIGTERM)  # no checkpoint yet: the stop writes one
    proc.wait(timeout=240)
    one_line_error(proc, code=128 + signal.SIGTERM, prefix="lmsprint: stopped: SIGTERM")
    assert summary(run_dir)["status"] == "interrupted" and load(run_dir)["step"] == summary(run_dir)["iterations_done"]


# ------------------------------------------------------------------- class 5 + 6: NaN, resume that changes the run


def _swap_files(src, dst):
    for f in os.listdir(src):
        if os.path.isfile(os.path.join(src, f)):
            shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))


@pytest.mark.slow
def test_resume_refuses_changes_then_an_accepted_lr_change_diverges_and_keeps_the_finite_checkpoint(data, tmp_path):
    mine = tmp_path / "mydata"  # the run's own copy of the prepared data (its files get swapped below)
    shutil.copytree(data, mine)
    base = tmp_path / "exps"
    run_dir = str(base / "run")
    proc = start(*flags(mine, base, "run", 100000), cwd=tmp_path)
    wait_for_checkpoint(proc, run_dir)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=240)
    good = load(run_dir)
    step = good["step"]

    def untouched():
        return ({f: digest(os.path.join(run_dir, f)) for f in ("config.yaml", "metrics.jsonl", "summary.json")},
                digest(ckpt(run_dir)))

    # config.yaml edited: refused, listing the key with both values; nothing touched
    cfg_path = rundir.config_path(run_dir)
    text = open(cfg_path).read()
    assert "lr: 0.001\n" in text
    with open(cfg_path, "w") as fh:
        fh.write(text.replace("lr: 0.001\n", "lr: 0.5\n"))
    before = untouched()
    p = cli("train", "--resume", run_dir, "--results_base_folder", base, cwd=tmp_path)
    last = one_line_error(p)
    assert "lr: 0.001 -> 0.5" in last and "--resume_override lr" in last
    assert untouched() == before

    # the data at the same path changed (another, smaller dataset prepared): refused, naming the dataset keys
    small = tmp_path / "small"
    p = cli("prepare", "--dataset", "shakespeare-char", "--data_dir", small, "--max_docs", 60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    (prepared,) = [small / d for d in os.listdir(small) if (small / d / "manifest.json").is_file()]
    _swap_files(prepared, mine)
    p = cli("train", "--resume", run_dir, "--results_base_folder", base, "--resume_override", "lr", cwd=tmp_path)
    last = one_line_error(p)
    assert "dataset.train_tokens" in last and "dataset.sha256_train" in last and "--resume_override dataset" in last
    assert untouched() == before
    _swap_files(data, mine)

    # an accepted lr change (a flag named in --resume_override) that diverges: stops at the next log step
    p = cli("train", "--resume", run_dir, "--results_base_folder", base, "--resume_override", "lr", "--lr", 1e30,
            cwd=tmp_path)
    last = one_line_error(p)
    assert any(w in last for w in (" is nan at step ", " is inf at step ", " is not finite at step ")), last
    assert f"checkpoint (step {step}) is kept" in last
    s = summary(run_dir)
    assert s["status"] == "failed" and "at step" in s["error"]
    kept = load(run_dir)
    assert kept["step"] == step and tensors_equal(kept["model"], good["model"])
    with open(rundir.metrics_path(run_dir)) as fh:
        for line in fh:
            json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))


# ------------------------------------------------------------------------------------ class 7: unsafe loading


@pytest.mark.slow
def test_a_pickled_checkpoint_is_not_loaded_and_gets_a_hint(data, reference, tmp_path):
    run_dir = tmp_path / "exps" / "old"
    shutil.copytree(reference, run_dir)
    st = torch.load(ckpt(reference), weights_only=True)
    st["format"] = 1
    rng = st["ranks"][0]["rng"]
    rng["numpy"] = ("MT19937", rng["numpy"]["keys"].numpy().astype("uint32"), 0, 0, 0.0)  # format 1: a numpy object
    torch.save(st, ckpt(run_dir))
    os.remove(rundir.weights_path(run_dir))  # runs of that format had no model.safetensors: eval reads the checkpoint
    s = summary(run_dir)
    s["status"] = "interrupted"
    with open(rundir.summary_path(run_dir), "w") as fh:
        json.dump(s, fh)
    p = cli("eval", run_dir, "--device", "cpu", cwd=tmp_path)
    last = one_line_error(p)
    assert "older lmsprint (format 1)" in last and "pickled" in last
