"""Tests of the metric sinks: metrics.jsonl rows, wandb offline read back from the .wandb file, TensorBoard events,
and the start-up check for missing optional packages."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys
import zlib

import pytest
import torch

from lmsprint.config import build_config
from lmsprint.errors import UserError
from lmsprint.track.sinks import Sinks, check_available, scalars, wandb_group, wandb_tags


def _cfg(**kw):
    values = {"config_format": "demo", "n_layer": 2, "n_embd": 64, "n_head": 4, "sequence_length": 32}
    values.update(kw)
    return build_config(values)


def read_wandb_records(path: str) -> list:
    """Parse a .wandb transaction log (LevelDB log format behind a 7-byte ':W&B' header) into wandb.proto Records,
    checking each chunk's CRC-32 so that a framing mistake cannot pass silently."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding at the end of a block
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"bad CRC at byte {pos}"
        pos += 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
    recs = []
    for d in out:
        r = pb.Record()
        r.ParseFromString(d)
        recs.append(r)
    return recs


def _items_to_dict(items) -> dict:
    out = {}
    for it in items:
        key = "/".join(it.nested_key) if it.nested_key else it.key
        out[key] = json.loads(it.value_json)
    return out


def wandb_offline_readback(run_dir: str) -> dict:
    """-> {"run": RunRecord, "config": {...}, "history": [row...], "summary": {...}, "files_dir": path}."""
    files = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(files) == 1, files
    res = {"run": None, "config": {}, "history": [], "summary": {}, "files_dir": os.path.join(
        os.path.dirname(files[0]), "files")}
    for r in read_wandb_records(files[0]):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            res["run"] = r.run
            res["config"].update(_items_to_dict(r.run.config.update))
        elif kind == "config":
            res["config"].update(_items_to_dict(r.config.update))
        elif kind == "history":
            res["history"].append(_items_to_dict(r.history.item))
        elif kind == "summary":
            res["summary"].update(_items_to_dict(r.summary.update))
    return res


def test_scalars_flattens_moe_arrays():
    load = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.1, 0.2, 0.3, 0.4]])
    out = scalars({"val/loss": torch.tensor(2.5), "moe/load": load, "moe/dropped_frac": [0.0, 0.125],
                   "note": "text"})
    assert out["val/loss"] == 2.5
    assert out["moe/load/l0/e1"] == 0.25 and out["moe/load/l1/e3"] == pytest.approx(0.4)
    assert len([k for k in out if k.startswith("moe/load/")]) == 8
    assert out["moe/dropped_frac/l1"] == 0.125
    assert "note" not in out


def test_jsonl_rows_always_have_iter_and_plain_values(tmp_path):
    cfg = _cfg()
    s = Sinks(cfg, str(tmp_path))
    s.log({"train/loss": torch.tensor(3.0), "lr": 1e-3, "moe/load": torch.tensor([[0.5, 0.5]])}, step=10)
    s.log({"val/loss": float("nan")}, step=20)
    s.log_text(20, "ROMEO:", "ROMEO: hello")
    s.finish({"status": "complete"})
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows[0] == {"iter": 10, "train/loss": 3.0, "lr": 1e-3, "moe/load": [[0.5, 0.5]]}
    assert rows[1] == {"iter": 20, "val/loss": "nan"}
    assert "ROMEO: hello" in (tmp_path / "samples.txt").read_text()


def test_disabled_rank_writes_nothing(tmp_path):
    s = Sinks(_cfg(wandb=True, tensorboard=True), str(tmp_path), enabled=False)
    s.log({"train/loss": 1.0}, step=1)
    s.log_text(1, "a", "ab")
    s.finish({"status": "complete"})
    assert os.listdir(tmp_path) == []


def test_missing_package_fails_at_start_with_pip_hint(monkeypatch):
    # sys.modules[name] = None is Python's own way to make `import name` fail, as without the extra
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match=r"pip install 'lmsprint\[wandb\]'"):
        check_available(_cfg(wandb=True))
    check_available(_cfg())  # not asked for: fine


@pytest.mark.slow
def test_missing_wandb_cli_one_line_exit_2(tmp_path):
    """A real interpreter where `import wandb` fails: the train command stops before making a run directory."""
    code = "import sys; sys.modules['wandb'] = None; from lmsprint.cli import main; raise SystemExit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", code, "train", "--config_format", "demo", "--wandb",
                          "--results_base_folder", str(tmp_path / "exps"), "--iterations", "2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'lmsprint[wandb]'" in lines[0]
    assert not (tmp_path / "exps").exists() or not any(
        os.path.isfile(os.path.join(tmp_path, "exps", d, "config.yaml")) for d in os.listdir(tmp_path / "exps"))


def test_wandb_offline_readback(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "my_run"
    run_dir.mkdir()
    cfg = _cfg(wandb=True, wandb_run_prefix="hack-", wandb_project="llm-hack", label_smoothing=0.1,
               moe_num_experts=4)
    s = Sinks(cfg, str(run_dir))
    s.log({"train/loss": 4.0, "lr": 1e-3, "tokens": 1024, "time/train_s": 0.5, "perf/tokens_per_s": 2048.0,
           "perf/mfu": 0.01}, step=5)
    load = torch.tensor([[0.25, 0.25, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4]])
    s.log({"val/loss": 3.5, "val/perplexity": 33.1, "val/acc": 0.2, "val/bpb": 1.9, "moe/load": load}, step=10)
    for i in range(1, 3):
        s.log_text(10 * i, "ROMEO:", f"ROMEO: sample {i}")
    summary = {"status": "complete", "params_total": 1234, "tokens": 2048,
               "final": {"val/loss": 3.25, "val/perplexity": 25.8, "val/acc": 0.25, "val/bpb": 1.8,
                         "eval_tokens": 4096}}
    s.finish(summary)

    wb = wandb_offline_readback(str(run_dir))
    assert wb["run"].display_name == "hack-my_run"
    assert wb["run"].project == "llm-hack"
    # runs of one seed group share a wandb group; tags name the preset, model and dataset
    assert wb["run"].run_group == wandb_group(cfg) and wandb_group(cfg) == wandb_group(_cfg(
        wandb=True, wandb_run_prefix="other-", label_smoothing=0.1, moe_num_experts=4, seed=7))
    assert wandb_group(cfg) != wandb_group(_cfg(label_smoothing=0.2, moe_num_experts=4))
    assert list(wb["run"].tags) == wandb_tags(cfg) and "demo" in wandb_tags(cfg)
    assert wb["config"]["train"]["label_smoothing"] == 0.1
    assert wb["config"]["model"]["moe"]["moe_num_experts"] == 4
    hist = wb["history"]
    train_row = next(h for h in hist if "train/loss" in h)
    assert train_row["iter"] == 5 and train_row["lr"] == 1e-3 and train_row["perf/tokens_per_s"] == 2048.0
    val_row = next(h for h in hist if "val/loss" in h)
    assert val_row["iter"] == 10 and val_row["val/bpb"] == 1.9 and val_row["val/perplexity"] == 33.1
    assert val_row["moe/load/l0/e2"] == 0.5 and val_row["moe/load/l1/e3"] == pytest.approx(0.4)
    # the samples table grows: the last one logged holds both rows; the latest expert load is tabled with it
    tables = [h for h in hist if "samples/_type" in h]
    assert len(tables) == 2 and tables[-1]["samples/nrows"] == 2
    table = json.load(open(os.path.join(wb["files_dir"], tables[-1]["samples/path"])))
    assert table["columns"] == ["iter", "prompt", "text"]
    assert table["data"] == [[10, "ROMEO:", "ROMEO: sample 1"], [20, "ROMEO:", "ROMEO: sample 2"]]
    load_t = json.load(open(os.path.join(wb["files_dir"], tables[-1]["moe/load_table/path"])))
    assert load_t["columns"] == ["layer", "e0", "e1", "e2", "e3"]
    assert load_t["data"][0] == [0, 0.25, 0.25, 0.5, 0.0] and load_t["data"][1][4] == pytest.approx(0.4)
    # final metrics in the run summary
    assert wb["summary"]["final/val/loss"] == 3.25 and wb["summary"]["final/val/bpb"] == 1.8
    assert wb["summary"]["params_total"] == 1234 and wb["summary"]["status"] == "complete"
    # the wandb dir lives inside the run dir, and the run id is kept for a resume
    assert (run_dir / "wandb" / "run_id").read_text().strip() == wb["run"].run_id
    # jsonl carries the same keys
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert rows[1]["moe/load"][0] == [0.25, 0.25, 0.5, 0.0]


def test_wandb_disabled_mode_runs(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    s = Sinks(_cfg(wandb=True), str(tmp_path))
    s.log({"train/loss": 1.0}, step=1)
    s.log_text(1, "a", "ab")
    s.finish({"status": "complete", "final": {"val/loss": 1.0}})
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["train/loss"] == 1.0
    assert not glob.glob(str(tmp_path / "wandb" / "offline-run-*"))


def test_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    s = Sinks(_cfg(tensorboard=True), str(tmp_path))
    for step in (1, 2, 3):
        s.log({"train/loss": 5.0 - step, "moe/load": [[0.75, 0.25]]}, step=step)
    s.log_text(3, "ROMEO:", "ROMEO: hi")
    s.finish({"status": "complete"})
    assert glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    ev = acc.Scalars("train/loss")
    assert [e.step for e in ev] == [1, 2, 3] and [e.value for e in ev] == [4.0, 3.0, 2.0]
    assert acc.Scalars("moe/load/l0/e0")[0].value == 0.75
