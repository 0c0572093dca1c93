"""A run folder is untrusted input: hostile folders built here (planted pickles, symbolic links, escaping pointers,
malformed files) are given to the real CLI (`in_process`: `lmsprint.cli.main`) and the Python API, which must
refuse each in one line (exit 2, no traceback), create no planted file and change no victim file. Also the API's
typed exceptions and `export --force`.

One tiny real run (shakespeare-char, 1 layer, 4 steps, a kept step_2.pt) is trained once per module; every case
works on its own copy.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import lmsprint
from lmsprint import rundir
from lmsprint.config import flatten
from lmsprint.errors import (ArgumentError, ArgumentTypeError, CheckpointError, ConfigError, InputNotFound,
                             RunFileError, RunNotFound, UnsafePathError, UserError)

pytestmark = [pytest.mark.usefixtures("one_thread"),
              # dcp.save without a process group (the shard folders built here): "assuming ... a single process"
              pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")]

FLAGS = dict(dataset="shakespeare-char", n_layer=1, n_embd=16, n_head=2, sequence_length=16, vocab_size=96,
             batch_size=2, iterations=4, eval_freq=2, eval_tokens=64, final_eval="fixed", sample_tokens=4,
             save_checkpoint_freq=2, time_budget=0, progress=False, device="cpu", threads=1, exp_name="r")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 4-step run (checkpoints/latest.pt at step 4, step_2.pt kept) and its data cache folder."""
    root = tmp_path_factory.mktemp("hostile")
    run = lmsprint.train(data_dir=str(root / "data"), results_base_folder=str(root / "exps"), **FLAGS)
    assert run.summary["status"] == "complete"
    return run


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the trained run as tmp_path/exps/r, with the `latest` pointer naming it (a pathlib.Path)."""
    exps = tmp_path / "exps"
    exps.mkdir()
    shutil.copytree(trained.run_dir, exps / "r")
    (exps / "latest").write_text("r\n")
    return exps / "r"


def one_line(res, *words):
    """The CLI refused in one line (exit 2, no traceback) whose text holds every one of `words`."""
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmsprint: error: "), res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def state_of(path) -> tuple:
    """A file's bytes and modification time (a victim must keep both)."""
    return open(path, "rb").read(), os.stat(path).st_mtime_ns


def tree_state(folder) -> dict:
    """Every file under `folder` with its bytes and modification time."""
    return {os.path.relpath(os.path.join(d, n), folder): state_of(os.path.join(d, n))
            for d, _, names in os.walk(folder) for n in names}


def set_summary(run, **fields) -> None:
    path = run / "summary.json"
    d = json.loads(path.read_text())
    d.update(fields)
    path.write_text(json.dumps(d))


def edit_checkpoint(run, name="latest.pt", **fields) -> None:
    path = run / "checkpoints" / name
    st = torch.load(path, weights_only=True)
    for key, value in fields.items():
        target = st
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        target[leaf] = value
    torch.save(st, path)


def rewrite_weights(run, change=None, meta=None) -> None:
    """model.safetensors rewritten with `change(tensors)` applied and `meta` merged into its metadata."""
    path = str(run / "model.safetensors")
    with safe_open(path, framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        metadata = dict(fh.metadata())
    if change:
        change(tensors)
    metadata.update(meta or {})
    save_file(tensors, path, metadata=metadata)


# ---------------------------------------------------------------------------------------------------- planted pickle


class _Planted:
    """A pickle that would create the marker folder when unpickled (what a downloaded run could hide)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def plant_pickle(run, marker, sharded="latest.shards-4-evil") -> None:
    """latest.pt names a DCP shard folder whose .metadata is the planted pickle; model.safetensors is gone, so
    every reader goes through the checkpoint."""
    edit_checkpoint(run, model=None, optimizer=None, sharded=sharded)
    d = run / "checkpoints" / sharded
    d.mkdir()
    (d / ".metadata").write_bytes(pickle.dumps(_Planted(marker)))
    os.remove(run / "model.safetensors")


@pytest.mark.parametrize("command", ["eval", "generate", "export", "resume"])
def test_planted_metadata_pickle_is_refused_and_never_runs(run, tmp_path, in_process, command):
    marker = tmp_path / "PWNED"
    plant_pickle(run, marker)
    set_summary(run, status="interrupted")
    args = {"eval": ["eval", run, "--eval_tokens", "64", "--device", "cpu"],
            "generate": ["generate", run, "--max_new_tokens", "2", "--device", "cpu"],
            "export": ["export", run, tmp_path / "hf"],
            "resume": ["train", "--resume", run, "--device", "cpu"]}[command]
    one_line(in_process(*args), ".metadata names the Python global posix.mkdir", "never loads")
    assert not marker.exists()
    assert not (tmp_path / "hf").exists()


def test_planted_pickle_is_refused_by_the_api(run, tmp_path):
    marker = tmp_path / "PWNED"
    plant_pickle(run, marker)
    with pytest.raises(CheckpointError, match="posix.mkdir"):
        lmsprint.load(str(run))
    assert not marker.exists()


def test_a_genuine_shard_folder_still_loads_through_the_allow_list(run, in_process):
    """A real DCP folder (written by torch.distributed.checkpoint here) reads back through the restricted
    unpickler: the same weights, the same val loss as model.safetensors."""
    import torch.distributed.checkpoint as dcp

    sd = lmsprint.load(str(run)).model.state_dict()
    dcp.save({"model": sd}, checkpoint_id=str(run / "checkpoints" / "latest.shards-4-real"))
    edit_checkpoint(run, model=None, optimizer=None, sharded="latest.shards-4-real")
    from_shards = in_process("eval", run, "--checkpoint", "latest.pt", "--eval_tokens", "64", "--device", "cpu")
    from_st = in_process("eval", run, "--eval_tokens", "64", "--device", "cpu")
    assert from_shards.returncode == 0 and from_st.returncode == 0, from_shards.stderr + from_st.stderr
    assert from_shards.stdout.split("val/loss")[1].split()[0] == from_st.stdout.split("val/loss")[1].split()[0]
    m = lmsprint.load(str(run), checkpoint="latest.pt")
    assert all(torch.equal(m.model.state_dict()[k], v) for k, v in sd.items())


def test_a_planted_pickle_in_a_shard_folders_optimizer_entry_is_refused_and_never_runs(run, tmp_path, in_process):
    """DCP stores non-tensor entries (the optimizer's param groups) as pickles, and its default planner unpickles
    them with weights_only=False. A genuine folder (metadata that passes the allow-list) whose `lr` entry points at a
    planted payload: resume refuses it in one line, naming the entry, and the payload never runs."""
    import io

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from lmsprint.model.transformer import Transformer
    from lmsprint.training.sharded import read_shard_metadata
    from lmsprint.training.step import build_train_step

    st = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    cfg = rundir.read_config(str(run))
    model = Transformer(cfg.model)
    model.load_state_dict(st["model"])
    opt = build_train_step(cfg, model, "cpu").optimizer
    opt.load_state_dict(st["optimizer"])
    msd, osd = get_state_dict(model, opt)
    folder = run / "checkpoints" / "latest.shards-4-evil"
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(folder))
    md = read_shard_metadata(str(folder))
    key = "optimizer.param_groups.0.lr"
    assert isinstance(md.state_dict_metadata[key], BytesStorageMetadata)
    marker = tmp_path / "PWNED"
    payload = io.BytesIO()
    torch.save(_Planted(marker), payload)
    for index, info in md.storage_data.items():
        if index.fqn == key:  # the entry now reads the payload appended to its data file
            data = folder / info.relative_path
            info.offset, info.length = data.stat().st_size, len(payload.getvalue())
            with open(data, "ab") as fh:
                fh.write(payload.getvalue())
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    edit_checkpoint(run, model=None, optimizer=None, sharded=folder.name)
    set_summary(run, status="interrupted")
    one_line(in_process("train", "--resume", run, "--device", "cpu"), "latest.shards-4-evil", "refused",
             f"'{key}'", "allow-list")
    assert not marker.exists()
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize("sharded", ["/tmp", "../../elsewhere", "..", "a/b"])
def test_a_shard_folder_outside_the_checkpoints_folder_is_refused(run, tmp_path, in_process, sharded):
    marker = tmp_path / "PWNED"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / ".metadata").write_bytes(pickle.dumps(_Planted(marker)))
    edit_checkpoint(run, model=None, optimizer=None, sharded=sharded)
    one_line(in_process("eval", run, "--checkpoint", "latest.pt", "--device", "cpu"), "latest.pt", "'sharded'")
    assert not marker.exists()


def test_a_shard_folder_linked_out_of_the_run_is_refused(run, tmp_path, in_process):
    marker = tmp_path / "PWNED"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / ".metadata").write_bytes(pickle.dumps(_Planted(marker)))
    os.symlink(outside, run / "checkpoints" / "latest.shards-4-link")
    edit_checkpoint(run, model=None, optimizer=None, sharded="latest.shards-4-link")
    one_line(in_process("eval", run, "--checkpoint", "latest.pt", "--device", "cpu"), "'sharded'", "symbolic link")
    assert not marker.exists()


def test_shard_metadata_naming_a_file_outside_its_folder_is_refused(run, tmp_path, in_process):
    """A well-formed DCP metadata whose storage entry names '../../config.yaml' (a read outside the folder)."""
    import torch.distributed.checkpoint as dcp
    from lmsprint.training.sharded import read_shard_metadata

    folder = run / "checkpoints" / "latest.shards-4-real"
    dcp.save({"model": lmsprint.load(str(run)).model.state_dict()}, checkpoint_id=str(folder))
    md = read_shard_metadata(str(folder))
    for info in md.storage_data.values():
        info.relative_path = "../../config.yaml"
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    edit_checkpoint(run, model=None, optimizer=None, sharded=folder.name)
    one_line(in_process("export", run, tmp_path / "hf", "--checkpoint", "latest.pt"), "../../config.yaml",
             "not a plain file of the folder")


# ---------------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize("pointer", ["../other", "/abs/other", "..", "r/../../other"])
def test_a_latest_pointer_leading_out_of_the_results_folder_is_refused(run, tmp_path, in_process, pointer):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (run.parent / "latest").write_text(pointer.replace("/abs/other", str(other)) + "\n")
    before = tree_state(other)
    res = in_process("eval", "latest", "--results_base_folder", run.parent, "--eval_tokens", "64", "--device", "cpu")
    one_line(res, "latest", "--results_base_folder")
    assert tree_state(other) == before and not (run / "eval.json").exists()
    with pytest.raises(UnsafePathError):
        lmsprint.load("latest", results_base_folder=str(run.parent))


def test_a_latest_pointer_to_a_link_out_of_the_results_folder_is_refused(run, tmp_path, in_process):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    os.symlink(other, run.parent / "r2")
    (run.parent / "latest").write_text("r2\n")
    before = tree_state(other)
    one_line(in_process("train", "--resume", "latest", "--results_base_folder", run.parent), "r2", "outside")
    assert tree_state(other) == before


@pytest.mark.parametrize("name", ["metrics.jsonl", "samples.txt", "run.lock", "summary.json", "model.safetensors",
                                  "config.yaml", "tokenizer_info.json"])
def test_resume_refuses_a_symlink_where_it_writes_and_the_victim_is_unchanged(run, tmp_path, in_process, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n" * 100)
    before = state_of(victim)
    set_summary(run, status="interrupted")
    if os.path.exists(run / name):
        os.remove(run / name)
    os.symlink(victim, run / name)
    one_line(in_process("train", "--resume", run, "--device", "cpu"), name, "symbolic link")
    assert state_of(victim) == before


def test_resume_refuses_a_linked_checkpoints_folder(run, tmp_path, in_process):
    victim = tmp_path / "victim"
    shutil.move(run / "checkpoints", victim)
    os.symlink(victim, run / "checkpoints")
    set_summary(run, status="interrupted")
    before = sorted((p.name, state_of(p)) for p in victim.iterdir())
    one_line(in_process("train", "--resume", run, "--device", "cpu"), "checkpoints", "symbolic link")
    assert sorted((p.name, state_of(p)) for p in victim.iterdir()) == before


def test_eval_refuses_a_linked_eval_json(run, tmp_path, in_process):
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    before = state_of(victim)
    os.symlink(victim, run / "eval.json")
    one_line(in_process("eval", run, "--eval_tokens", "64", "--device", "cpu"), "eval.json", "symbolic link")
    assert state_of(victim) == before


def test_a_planted_temporary_file_link_is_replaced_not_followed(run, tmp_path, in_process):
    """The atomic writer's temporary name (`.summary.json.tmp<pid>`) planted as a link: the resume writes its own
    file, the victim is unchanged, and the run completes."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    before = state_of(victim)
    shutil.copy(run / "checkpoints" / "step_2.pt", run / "checkpoints" / "latest.pt")
    set_summary(run, status="interrupted")
    for name in ("summary.json", "config.yaml", "model.safetensors", "tokenizer_info.json"):
        os.symlink(victim, run / f".{name}.tmp{os.getpid()}")
    res = in_process("train", "--resume", run, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert state_of(victim) == before
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("name", ["config.yaml", "checkpoints/latest.pt", "model.safetensors", "tokenizer_info.json"])
def test_a_run_file_linked_out_of_the_run_is_not_read(run, tmp_path, in_process, name):
    outside = tmp_path / "outside"
    shutil.copy(run / name, outside)
    os.remove(run / name)
    os.symlink(outside, run / name)
    if name != "model.safetensors":
        os.remove(run / "model.safetensors")  # so that generate reads checkpoints/latest.pt
    res = in_process("generate", run, "--max_new_tokens", "2", "--device", "cpu")
    one_line(res, os.path.basename(name), "outside the run directory")


# ---------------------------------------------------------------------------------------------------- malformed files


@pytest.mark.parametrize("meta,words", [
    ({"aliases": "{not json"}, ("metadata 'aliases'", "not JSON")),
    ({"aliases": "[1, 2]"}, ("metadata 'aliases'", "list")),
    ({"aliases": '{"lm_head.weight": "nope"}'}, ("metadata 'aliases'", "'nope'")),
    ({"step": "abc"}, ("metadata 'step'", "'abc'")),
    ({"step": "-3"}, ("metadata 'step'", "'-3'")),
])
def test_malformed_safetensors_metadata(run, in_process, meta, words):
    rewrite_weights(run, meta=meta)
    one_line(in_process("generate", run, "--max_new_tokens", "2", "--device", "cpu"), "model.safetensors", *words)
    with pytest.raises(RunFileError, match="model.safetensors"):
        lmsprint.load(str(run))


def test_weights_of_another_shape_are_not_exported(run, tmp_path, in_process):
    rewrite_weights(run, change=lambda t: t.update({"wte.weight": torch.zeros(96, 8)}))
    one_line(in_process("export", run, tmp_path / "hf"), "model.safetensors", "tensor 'wte.weight'", "[96, 8]",
             "[96, 16]")
    assert not (tmp_path / "hf").exists()
    rewrite_weights(run, change=lambda t: t.pop("ln_f.weight"))
    one_line(in_process("export", run, tmp_path / "hf"), "tensor 'ln_f.weight'", "missing")
    rewrite_weights(run, change=lambda t: t.update({"ln_f.weight": torch.ones(16), "extra": torch.ones(1)}))
    one_line(in_process("export", run, tmp_path / "hf"), "tensor 'extra'", "no tensor of this model")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("command", ["eval", "generate", "export", "load"])
def test_non_finite_weights_are_refused(run, tmp_path, in_process, command):
    def poison(t):
        t["blocks.0.mlp.c_fc.weight"][3, 5] = float("nan")
    rewrite_weights(run, change=poison)
    if command == "load":
        with pytest.raises(RunFileError, match="non-finite"):
            lmsprint.load(str(run))
        return
    args = {"eval": ["eval", run, "--eval_tokens", "64", "--device", "cpu"],
            "generate": ["generate", run, "--max_new_tokens", "2", "--device", "cpu"],
            "export": ["export", run, tmp_path / "hf"]}[command]
    one_line(in_process(*args), "model.safetensors", "tensor 'blocks.0.mlp.c_fc.weight'", "non-finite")
    assert not (run / "eval.json").exists() and not (tmp_path / "hf").exists()


@pytest.mark.parametrize("edit,words", [
    (lambda d: d.update(vocab=5), ("field 'vocab'", "not the char tokenizer's characters")),
    (lambda d: d.update(vocab=d["vocab"][:10]), ("field 'vocab'", "10 tokens", "'n_vocab'")),
    (lambda d: d.update(vocab="".join(map(chr, range(200, 400))), n_vocab=200),
     ("field 'vocab'", "200 tokens", "vocab_size 96")),
    (lambda d: d.update(name=["gpt2"]), ("field 'name'",)),
    (lambda d: d.update(n_vocab="81"), ("field 'n_vocab'",)),
    (lambda d: d.clear(), ("field 'name'",)),
])
def test_malformed_tokenizer_info(run, tmp_path, in_process, edit, words):
    path = run / "tokenizer_info.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    one_line(in_process("generate", run, "--max_new_tokens", "2", "--device", "cpu"), "tokenizer_info.json", *words)
    one_line(in_process("export", run, tmp_path / "hf"), "tokenizer_info.json", *words)
    with pytest.raises(RunFileError, match="tokenizer_info.json"):
        lmsprint.load(str(run))


@pytest.mark.parametrize("field,value,words", [
    ("step", "4", "field 'step'"),
    ("step", -1, "field 'step'"),
    ("clock.train_time", float("nan"), "field 'clock'"),
    ("record.rows", "a", "field 'record'"),
    ("ranks.0.metrics", 3, "field 'ranks'"),
    ("ranks.0.rng", {}, "field 'ranks'"),
    ("model", [1, 2], "field 'model'"),
    ("world_size", 0, "field 'world_size'"),
])
def test_checkpoint_fields_of_the_wrong_type(run, in_process, field, value, words):
    edit_checkpoint(run, **{field: value})
    set_summary(run, status="interrupted")
    one_line(in_process("train", "--resume", run, "--device", "cpu"), "latest.pt", words)
    one_line(in_process("eval", run, "--checkpoint", "latest.pt", "--device", "cpu"), "latest.pt", words)


def test_the_combined_muon_optimizer_state_is_a_valid_checkpoint_field(tiny, tmp_path):
    """--opt muon saves {combined, optimizers} (Muon + AdamW), not one torch optimizer's {state, param_groups}: the
    field check accepts that shape (a muon run must resume) and still names a damaged one."""
    from lmsprint.model.transformer import Transformer
    from lmsprint.training import state
    from lmsprint.training.step import build_train_step

    cfg = tiny(model="llama2", opt="muon", scheduler="wsd", lr=0.01)
    step = build_train_step(cfg, Transformer(cfg.model), "cpu")
    x = torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size * cfg.train.acc_steps, cfg.model.sequence_length))
    step.step(x, x)
    sd = step.optimizer.state_dict()
    assert sorted(sd) == ["combined", "optimizers"]
    path = str(tmp_path / "latest.pt")
    ok = {"model": {}, "step": 1, "optimizer": sd}
    assert state.check_checkpoint(ok, path) is ok
    for bad in ({**sd, "optimizers": [1, 2]}, {**sd, "combined": "Muon"}, {**sd, "optimizers": sd["optimizers"][:1]}):
        with pytest.raises(RunFileError, match="field 'optimizer'"):
            state.check_checkpoint({**ok, "optimizer": bad}, path)


@pytest.mark.parametrize("field", ["clock", "sampler", "record", "target", "ranks", "config", "data", "optimizer"])
def test_a_checkpoint_without_what_a_resume_needs_is_refused_by_resume_only(run, in_process, field):
    """Every state a resume restores or checks must be in the checkpoint: without the sampler's the run would go on
    from the first batch again, without the data identity it would not notice other data."""
    st = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    del st[field]
    torch.save(st, run / "checkpoints" / "latest.pt")
    set_summary(run, status="interrupted")
    one_line(in_process("train", "--resume", run, "--device", "cpu"), "latest.pt", f"field '{field}'",
             "missing")
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    res = in_process("eval", run, "--checkpoint", "latest.pt", "--eval_tokens", "64", "--device", "cpu")
    assert res.returncode == 0, res.stderr


def test_compare_of_a_folder_with_an_escaping_pointer_still_compares_its_runs(run, in_process):
    (run.parent / "latest").write_text("../elsewhere\n")
    res = in_process("compare", str(run.parent / "*"), "--no_report")
    assert res.returncode == 0 and "r" in res.stdout.split(), res.stderr
    one_line(in_process("compare", run.parent / "latest", "--no_report"), "../elsewhere")


def test_a_checkpoint_past_the_runs_end_is_refused_unless_the_end_is_raised(run, in_process):
    edit_checkpoint(run, step=10)
    set_summary(run, status="interrupted")
    one_line(in_process("train", "--resume", run, "--device", "cpu"), "step 10", "past the run's end",
             "--resume_override iterations")
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    res = in_process("train", "--resume", run, "--device", "cpu", "--resume_override", "iterations", "--iterations", "12")
    assert res.returncode == 0, res.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["iterations_done"] == 12


def test_an_accepted_override_is_kept_by_the_checkpoints_the_resumed_run_writes(run, in_process):
    """A change accepted with --resume_override is the run's config from then on: the checkpoints written after it
    hold it, so resuming one of them again needs no override and continues with the accepted values."""
    ckpts = run / "checkpoints"
    shutil.copy(ckpts / "step_2.pt", ckpts / "latest.pt")
    set_summary(run, status="interrupted")
    res = in_process("train", "--resume", run, "--device", "cpu", "--resume_override", "lr,iterations", "--lr", "0.002",
                     "--iterations", "6", "--save_checkpoint_steps", "4")
    assert res.returncode == 0, res.stderr
    for name in ("step_4.pt", "latest.pt"):
        saved = flatten(torch.load(ckpts / name, weights_only=True)["config"])
        assert (saved["lr"], saved["iterations"]) == (0.002, 6), name
    shutil.copy(ckpts / "step_4.pt", ckpts / "latest.pt")
    set_summary(run, status="interrupted")
    res = in_process("train", "--resume", run, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["iterations_done"] == 6
    cfg = rundir.read_config(str(run))
    assert (cfg.optim.lr, cfg.train.iterations) == (0.002, 6)


def test_an_accepted_batch_override_changes_the_global_batch_and_earlier_steps_keep_their_tokens(run, in_process):
    """`--resume_override batch_size` (or acc_steps) is a new batch from the checkpoint's step on: it is neither
    undone by keeping the old global batch nor counted back over the steps already trained. Tokens per eval row and
    in summary.json are the sum of each step's own batch, and later resumes keep the new batch without an override."""
    ckpts, seq = run / "checkpoints", FLAGS["sequence_length"]
    old_batch = FLAGS["batch_size"] * torch.load(ckpts / "step_2.pt", weights_only=True)["config"]["train"]["acc_steps"]
    shutil.copy(ckpts / "step_2.pt", ckpts / "latest.pt")
    set_summary(run, status="interrupted")
    res = in_process("train", "--resume", run, "--device", "cpu", "--resume_override", "batch_size,iterations",
                     "--batch_size", "1", "--iterations", "6")
    assert res.returncode == 0, res.stderr
    new_batch = old_batch // 2  # batch_size 2 -> 1, the same accumulation
    assert f"another global batch (--resume_override batch_size): {old_batch} -> {new_batch} sequences" in res.stderr
    assert "global batch stays" not in res.stderr
    tokens = {r["iter"]: r["tokens"] for r in rundir.read_metrics(str(run)) if "val/loss" in r and "tokens" in r}
    assert tokens == {2: 2 * old_batch * seq, 4: (2 * old_batch + 2 * new_batch) * seq,
                      6: (2 * old_batch + 4 * new_batch) * seq}
    assert json.loads((run / "summary.json").read_text())["tokens"] == tokens[6]
    latest = torch.load(ckpts / "latest.pt", weights_only=True)
    assert latest["global_batch"] == new_batch and latest["clock"]["tokens"] == tokens[6]
    assert rundir.read_config(str(run)).train.batch_size == 1
    # accumulation overridden in turn; then a plain extension keeps that batch with no line about it
    set_summary(run, status="interrupted")
    res = in_process("train", "--resume", run, "--device", "cpu", "--resume_override", "acc_steps,iterations",
                     "--acc_steps", "1", "--iterations", "8")
    assert res.returncode == 0 and f"{new_batch} -> 1 sequence (16 tokens)" in res.stderr, res.stderr
    set_summary(run, status="interrupted")
    res = in_process("train", "--resume", run, "--device", "cpu", "--resume_override", "iterations", "--iterations", "10")
    assert res.returncode == 0 and "global batch" not in res.stderr, res.stderr
    assert json.loads((run / "summary.json").read_text())["tokens"] == tokens[6] + 4 * seq


@pytest.mark.parametrize("text,words", [
    ("model:\n  n_layer: abc\n", ("config.yaml", "n_layer", "'abc'")),
    ("- 1\n- 2\n", ("config.yaml", "list")),
    ("a: &x [1]\nb: *x\n", ("config.yaml", "alias")),
    ("model:\n  n_layer: 1\n  n_layer: 2\n", ("config.yaml", "'n_layer' is given twice")),
    ("model: {1: 2}\n", ("config.yaml", "key 1")),
    ("model:\n  bogus_option: 1\n", ("config.yaml", "bogus_option")),
])
def test_malformed_config_yaml(run, in_process, text, words):
    (run / "config.yaml").write_text(text)
    one_line(in_process("generate", run, "--max_new_tokens", "2", "--device", "cpu"), *words)
    with pytest.raises(RunFileError):
        lmsprint.load(str(run))


@pytest.mark.parametrize("edit,words", [
    (lambda d: d.update(status=5), "field 'status'"),
    (lambda d: d.pop("status"), "field 'status'"),
    (lambda d: d.update(iterations_done="4"), "field 'iterations_done'"),
    (lambda d: d.update(final=[1, 2]), "field 'final'"),
])
def test_malformed_summary_refuses_resume_and_is_skipped_by_compare(run, tmp_path, in_process, edit, words):
    shutil.copytree(run, run.parent / "good")
    path = run / "summary.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    one_line(in_process("train", "--resume", run, "--device", "cpu"), "summary.json", words)
    res = in_process("compare", run.parent, "--no_report")
    assert res.returncode == 0, res.stderr
    assert "good" in res.stdout and f"skipped run {run}: {path}: {words}" in res.stdout


@pytest.mark.parametrize("line,words", [
    (b'{"iter": "x", "val/loss": 1.0}\n', "field 'iter'"),
    (b'{"iter": 3, "val/loss": "low"}\n', "field 'val/loss'"),
    (b'[1, 2]\n', "list"),
    (b'{"iter": 3, \xff\xfe}\n', "not UTF-8"),
    (b'{"iter": 3\n', "not valid JSON"),
])
def test_compare_skips_a_run_with_malformed_metrics_and_reports_the_others(run, in_process, line, words):
    shutil.copytree(run, run.parent / "good")
    with open(run / "metrics.jsonl", "ab") as fh:
        fh.write(line)
    n = len((run / "metrics.jsonl").read_bytes().splitlines())
    res = in_process("compare", run.parent, "--no_report")
    assert res.returncode == 0, res.stderr
    assert f"skipped run {run}: {run / 'metrics.jsonl'}: line {n}" in res.stdout and words in res.stdout
    assert "good" in res.stdout
    # a run still going may have a half-written last line: that is not damage
    with open(run.parent / "good" / "metrics.jsonl", "ab") as fh:
        fh.write(b'{"iter": 5, "val/lo')
    assert in_process("compare", run.parent / "good", "--no_report").returncode == 0


def test_a_malformed_lm_eval_results_file_is_named_and_skipped(run, in_process):
    (run / "evals").mkdir()
    (run / "evals" / "lm_eval-20250101-000000.json").write_text("[1]")
    (run / "evals" / "lm_eval-20250101-000001.json").write_text('{"results": {"t": 5}}')
    res = in_process("compare", run, "--no_report")
    assert res.returncode == 0, res.stderr
    assert "lm_eval-20250101-000000.json: holds list" in res.stdout
    assert "lm_eval-20250101-000001.json: field 'results.t'" in res.stdout


def test_compare_of_only_malformed_runs_is_one_line(run, in_process):
    (run / "summary.json").write_text("[]")
    one_line(in_process("compare", run, "--no_report"), "none of the runs could be read", "summary.json")


# ---------------------------------------------------------------------------------------------------- export --force


def test_export_refuses_a_non_empty_folder_or_empty_name_unless_forced(run, tmp_path, in_process):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text("old")
    one_line(in_process("export", run, out), "not empty", "--force")
    one_line(in_process("export", run, ""), "OUT_DIR is empty", "--force")
    assert (out / "config.json").read_text() == "old" and sorted(os.listdir(out)) == ["config.json", "notes.txt"]
    res = in_process("export", run, out, "--force")
    assert res.returncode == 0, res.stderr
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    assert {"model.safetensors", "tokenizer.json"} <= set(os.listdir(out))
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # the assembly folder is gone
    work = tmp_path / "cwd"
    work.mkdir()
    res = in_process("export", run, "", "--force", cwd=work)
    assert res.returncode == 0, res.stderr
    assert "config.json" in os.listdir(work)


# ---------------------------------------------------------------------------------------------------- API


@pytest.fixture
def model(run):
    return lmsprint.load(str(run))


def test_api_errors_are_typed_and_name_the_argument(run, model, tmp_path):
    cases = [
        (lambda: lmsprint.load(123), ArgumentTypeError, TypeError, "run_dir"),
        (lambda: lmsprint.load(str(tmp_path / "nope")), RunNotFound, FileNotFoundError, "nope"),
        (lambda: lmsprint.load("latest", results_base_folder=str(tmp_path / "empty")), RunNotFound,
         FileNotFoundError, "no runs"),
        (lambda: lmsprint.load(str(run), device=0), ArgumentTypeError, TypeError, "device"),
        (lambda: lmsprint.load(str(run), device="tpu"), ConfigError, ValueError, "device"),
        (lambda: lmsprint.load(str(run), checkpoint="../config.yaml"), UserError, ValueError, "no checkpoint"),
        (lambda: model.logits(torch.tensor([[1.0, 2.0]])), ArgumentTypeError, TypeError, "ids"),
        (lambda: model.logits(torch.tensor([[True]])), ArgumentTypeError, TypeError, "ids"),
        (lambda: model.logits([[1, 2], [3]]), ArgumentTypeError, TypeError, "ids"),
        (lambda: model.logits("abc"), ArgumentTypeError, TypeError, "ids"),
        (lambda: model.logits(torch.tensor([[1, 96]])), ArgumentError, ValueError, "96"),
        (lambda: model.logits(torch.tensor([[-1, 2]])), ArgumentError, ValueError, "-1"),
        (lambda: model.logits(torch.zeros(1, 0, dtype=torch.long)), ArgumentError, ValueError, "empty"),
        (lambda: model.logits(torch.zeros(1, 1, 1, dtype=torch.long)), ArgumentError, ValueError, "shape"),
        (lambda: model.logits(torch.zeros(1, 17, dtype=torch.long)), ArgumentError, ValueError, "sequence_length"),
        (lambda: model.generate(5), ArgumentTypeError, TypeError, "prompt"),
        (lambda: model.generate("\u00e9\u00e9"), ArgumentError, ValueError, "prompt"),
        (lambda: model.generate("a", max_new_tokens=-1), ArgumentError, ValueError, "max_new_tokens"),
        (lambda: model.generate("a", max_new_tokens=2.5), ArgumentTypeError, TypeError, "max_new_tokens"),
        (lambda: model.generate("a", temperature=float("nan")), ArgumentError, ValueError, "temperature"),
        (lambda: model.generate("a", temperature=-1), ArgumentError, ValueError, "temperature"),
        (lambda: model.generate("a", temperature=1e-45), ArgumentError, ValueError, "temperature"),
        (lambda: model.generate("a", temperature="hot"), ArgumentTypeError, TypeError, "temperature"),
        (lambda: model.generate("a", top_k=1.5), ArgumentTypeError, TypeError, "top_k"),
        (lambda: model.generate("a", top_k=-2), ArgumentError, ValueError, "top_k"),
        (lambda: model.generate("a", seed=-1), ArgumentError, ValueError, "seed"),
        (lambda: model.generate("a", seed=2**70), ArgumentError, ValueError, "seed"),
        (lambda: model.generate("a", seed=True), ArgumentTypeError, TypeError, "seed"),
        (lambda: model.encode(b"x"), ArgumentTypeError, TypeError, "text"),
        (lambda: model.decode([1, 500]), ArgumentError, ValueError, "500"),
        (lambda: model.decode([[1]]), ArgumentError, ValueError, "ids"),
        (lambda: lmsprint.train(bogus_flag=1), ArgumentTypeError, TypeError, "bogus_flag"),
        (lambda: lmsprint.train(n_layer="abc"), ConfigError, ValueError, "n_layer"),
        (lambda: lmsprint.train(config=5), ArgumentTypeError, TypeError, "config"),
        (lambda: lmsprint.train(config_file=str(tmp_path / "none.yaml")), InputNotFound, FileNotFoundError,
         "config_file"),
        (lambda: lmsprint.train(resume=str(tmp_path / "nope")), RunNotFound, FileNotFoundError, "nope"),
        (lambda: lmsprint.train(resume=str(run)), UserError, ValueError, "already complete"),
        (lambda: (set_summary(run, status="interrupted"), lmsprint.train(resume=str(run), n_layer=3)), UserError,
         ValueError, "n_layer"),
        (lambda: lmsprint.train(resume=str(run), resume_override=5), ArgumentTypeError, TypeError,
         "resume_override"),
        (lambda: lmsprint.train(resume_override="lr"), ArgumentError, ValueError, "resume_override"),
    ]
    for call, kind, builtin, words in cases:
        with pytest.raises(kind, match=words.replace("(", r"\(")) as info:
            call()
        assert isinstance(info.value, builtin), (words, type(info.value))
        if isinstance(info.value, (ArgumentError, ArgumentTypeError)):
            assert info.value.argument in str(info.value)
    assert not rundir.is_locked(str(run))  # refused resumes left the run free


@pytest.mark.parametrize("name,value", [("seed", 2**63), ("seed", 2**64 - 1), ("top_k", 2**31),
                                        ("max_new_tokens", 2**31)])
def test_api_generate_keeps_the_rules_of_the_cli_flags(run, model, in_process, name, value):
    """`generate`'s arguments are checked by `lmsprint generate`'s own flags: a value the CLI refuses (a seed past
    2**63 - 1, a count past 2**31 - 1) is an ArgumentError from Python too, never a sample the CLI cannot repeat."""
    one_line(in_process("generate", run, "--max_new_tokens", "2", "--device", "cpu", f"--{name}", value),
             f"--{name}")
    with pytest.raises(ArgumentError, match=f"^{name} .*: must be at most") as info:
        model.generate("a", **{"max_new_tokens": 2, name: value})
    assert info.value.argument == name and "\n" not in str(info.value)
    top = 2**63 - 1  # the largest seed both take, with the same sample
    cli = in_process("generate", run, "--prompt", "ROMEO:", "--max_new_tokens", "6", "--seed", top, "--device", "cpu")
    assert cli.returncode == 0 and cli.stdout == model.generate("ROMEO:", max_new_tokens=6, seed=top) + "\n"


def test_api_ids_accept_lists_1d_and_numpy(model):
    import numpy as np

    ids = model.encode("ROMEO:")
    two = model.logits([ids])
    assert model.logits(ids).shape == (len(ids), 96) and torch.equal(model.logits(ids), two[0])
    assert torch.equal(model.logits(np.array([ids], dtype=np.int32)), two)
    assert model.decode(torch.tensor(ids)) == "ROMEO:" and model.decode([]) == ""
    assert model.generate("ROMEO:", max_new_tokens=3, temperature=0).startswith("ROMEO:")
    assert model.generate("ROMEO:", max_new_tokens=0) == "ROMEO:"


def test_api_train_resume_continues_the_run_exactly(trained, run):
    """`lmsprint.train(resume=RUN)` from the kept step-2 checkpoint ends where the uninterrupted run ended."""
    shutil.copy(run / "checkpoints" / "step_2.pt", run / "checkpoints" / "latest.pt")
    set_summary(run, status="interrupted")
    resumed = lmsprint.train(resume=str(run), device="cpu")
    assert resumed.run_dir == str(run) and resumed.summary["status"] == "complete"
    assert resumed.summary["iterations_done"] == 4
    assert resumed.summary["final"]["val/loss"] == trained.summary["final"]["val/loss"]
    assert not rundir.is_locked(str(run))
