"""Unit tests of the training spine's parts: model causality and size, run dirs, checkpoints, evaluation,
sampling (no data preparation needed)."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmsprint.config import build_config
from lmsprint.errors import CheckpointError, UserError
from lmsprint.model.transformer import Transformer
from lmsprint.training import state as ckpt
from lmsprint import rundir as runs
from lmsprint.training.clock import Clock
from lmsprint.training.distributed import World
from lmsprint.training.evaluate import evaluate
from lmsprint.training.generate import generate_tokens
from lmsprint.training.metrics import MetricAccumulator
from tiny import tiny_config

def small_cfg(**kw):
    return tiny_config(**{"n_embd": 64, "vocab_size": 97, **kw})


# ---------------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("model", ["base", "llama2"])
def test_changing_token_t_never_changes_logits_before_t(model):
    torch.manual_seed(0)
    m = Transformer(small_cfg(model=model).model).eval()
    idx = torch.randint(0, 97, (2, 32))
    with torch.no_grad():
        ref = m.logits(idx)
        for t in (0, 7, 31):
            idx2 = idx.clone()
            idx2[:, t] = (idx2[:, t] + 1) % 97
            out = m.logits(idx2)
            assert torch.equal(out[:, :t], ref[:, :t]), t
            assert not torch.allclose(out[:, t:], ref[:, t:])  # the change is visible from t on


@pytest.mark.parametrize("flags,expected_m", [({}, 123.98), ({"model": "llama2"}, 123.59),
                                              ({"n_layer": 24}, 208.93)])
def test_parameter_counts_match_llm_baselines(flags, expected_m):
    cfg = build_config(flags)
    with torch.device("meta"):
        m = Transformer(cfg.model)
    assert round(m.num_params() / 1e6, 2) == expected_m


# ---------------------------------------------------------------------------------------------------- run dirs


def test_run_name_is_derived_from_the_flags_that_matter():
    cfg = small_cfg(model="llama2", moe_num_experts=4, moe_num_experts_per_tok=2, label_smoothing=0.1, seed=3)
    assert runs.run_name(cfg) == "llama2_l2_d64_moe4k2_s3_ls0.1"
    assert runs.run_name(small_cfg(exp_name="mine", run_prefix="p_")) == "p_mine"


def _make(base, q):
    q.put(runs.create_run_dir(small_cfg(results_base_folder=base)))


@pytest.mark.slow
def test_identical_concurrent_runs_get_distinct_new_dirs(tmp_path):
    base = str(tmp_path / "exps")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_make, args=(base, q)) for _ in range(3)]
    for p in procs:
        p.start()
    dirs = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    dirs.append(runs.create_run_dir(small_cfg(results_base_folder=base)))
    names = sorted(os.path.basename(d) for d in dirs)
    assert names == ["base_l2_d64_s0", "base_l2_d64_s0-2", "base_l2_d64_s0-3", "base_l2_d64_s0-4"]
    # 'latest' = the most recently created one (pointer file), and only real run dirs resolve
    for d in dirs:
        runs.write_config(d, small_cfg())
    assert runs.resolve_run_dir("latest", base) == dirs[-1]
    with pytest.raises(UserError, match="not a run directory"):
        runs.resolve_run_dir(str(tmp_path), base)
    with pytest.raises(UserError, match="no runs found"):
        runs.resolve_run_dir("latest", str(tmp_path / "empty"))


def test_config_round_trip_and_metrics_truncation(tmp_path):
    cfg = small_cfg(model="llama2", lr=3e-3, time_budget="2m")
    d = str(tmp_path)
    runs.write_config(d, cfg)
    assert runs.read_config(d).to_dict() == cfg.to_dict()
    with open(os.path.join(d, "metrics.jsonl"), "w") as fh:
        for i in range(5):
            fh.write(json.dumps({"iter": i}) + "\n")
        fh.write('{"iter": 5, "trai')  # half-written row of a killed process
    runs.truncate_metrics(d, 3)
    assert [r["iter"] for r in runs.read_metrics(d)] == [0, 1, 2]
    runs.truncate_metrics(d, 10)
    assert len(runs.read_metrics(d)) == 3


# ---------------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    path = str(tmp_path / "checkpoints" / "latest.pt")
    m = Transformer(small_cfg().model)
    torch.manual_seed(5)
    st = ckpt.rng_state()
    ckpt.save_checkpoint(path, {"model": m.state_dict(), "step": 7, "rng": st})
    assert os.listdir(tmp_path / "checkpoints") == ["latest.pt"]  # no temporary file left behind
    a = torch.rand(3)
    loaded = ckpt.load_checkpoint(path)
    assert loaded["step"] == 7
    assert all(torch.equal(loaded["model"][k], v) for k, v in m.state_dict().items())
    ckpt.set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), a)  # RNG restored exactly

    with pytest.raises(UserError, match="missing or corrupt"):
        ckpt.load_checkpoint(str(tmp_path / "nope.pt"))
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(UserError, match="missing or corrupt"):
        ckpt.load_checkpoint(path)


def test_checkpoint_of_another_format_version_is_refused(tmp_path):
    path = str(tmp_path / "latest.pt")
    ckpt.save_checkpoint(path, {"model": {}, "step": 1})
    assert ckpt.load_checkpoint(path)["format"] == ckpt.FORMAT_VERSION
    state = torch.load(path, weights_only=False)
    for other in (ckpt.FORMAT_VERSION + 1, None):
        if other is None:
            state.pop("format")
        else:
            state["format"] = other
        torch.save(state, path)
        with pytest.raises(CheckpointError, match=f"format version {other}, this lmsprint reads version "
                           f"{ckpt.FORMAT_VERSION}") as e:
            ckpt.load_checkpoint(path)
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------- clock


def run_clock(clock: Clock, n: int) -> list:
    ticks = []
    for _ in range(n):
        clock.begin_step()
        ticks.append(clock.end_step())
    return ticks


def test_clock_counts_steps_and_says_what_each_asks_for():
    """Log every 3 steps and at the last, eval every 4, the last at `iterations`; the first step of a compiled run is
    compile time, outside the training time and the throughput; the schedule runs on steps."""
    c = Clock(None, 10, World(), log_every=3, eval_every=4, compiled=True)
    c.start()
    ticks = []
    while not c.done():
        c.begin_step()
        ticks.append(c.end_step())
    assert [t.step for t in ticks] == list(range(1, 11)) and c.step == 10
    assert [t.step for t in ticks if t.log] == [3, 6, 9, 10] and [t.step for t in ticks if t.eval] == [4, 8]
    assert [t.step for t in ticks if t.last] == [10]
    assert ticks[0].seconds == 0.0 and c.compile_time > 0 and c.train_time == sum(t.seconds for t in ticks)
    assert ticks[2].interval_steps == 2 and ticks[5].interval_steps == 3 and ticks[9].interval_steps == 1
    assert c.total_steps == 10 and c.progress() == 1.0


def test_clock_budget_ends_the_run_inside_the_loop_and_its_state_round_trips():
    """With a time budget the last step is the one whose training time reaches it (a log tick, so its partial
    interval is logged); the schedule runs on time; a clock restored from the state is done as well."""
    c = Clock(100.0, 1000, World(), log_every=50, eval_every=0)
    c.start()
    run_clock(c, 3)
    assert not c.done() and c.total_steps is None and 0 < c.progress() < 1
    c.train_time = 100.0  # the budget is spent by the time the next step ends
    tick = run_clock(c, 1)[0]
    assert tick.last and tick.log and tick.step == 4 and tick.interval_steps == 4 and c.done()
    d = Clock(100.0, 1000, World())
    saved = c.state_dict()
    d.load_state_dict(saved)  # d has not started: its wall time stays the saved one
    assert d.done() and d.step == 4 and d.state_dict() == saved


def test_metric_accumulator_reads_means_and_respreads_over_another_number_of_processes():
    """Two processes' accumulators respread over one process read what the two would have read together, and over
    two processes again each reads the same global means."""
    stats = [{"loss": torch.tensor(2.0), "ce_sum": torch.tensor(30.0), "n": 10, "aux": {"moe/aux_loss": torch.tensor(0.5)}},
             {"loss": torch.tensor(4.0), "ce_sum": torch.tensor(50.0), "n": 10, "aux": {"moe/aux_loss": torch.tensor(1.5)}}]
    ranks = []
    for st in stats:
        m = MetricAccumulator("cpu")
        m.add(st)
        m.add(st)
        ranks.append(m.state_dict())
    one = MetricAccumulator("cpu")
    one.load_state_dict(MetricAccumulator.respread(ranks, 1))
    loss, ce, aux = one.read(World())
    assert (loss, ce, aux) == (3.0, 4.0, {"moe/aux_loss": 1.0})  # mean objective, CE per token of both, mean aux
    assert one.read(World()) is None and one.steps == 0  # read resets
    two = MetricAccumulator("cpu")
    two.load_state_dict(MetricAccumulator.respread(ranks, 2))
    assert two.read(World()) == (3.0, 4.0, {"moe/aux_loss": 1.0})


# ---------------------------------------------------------------------------------------------------- eval


def test_evaluate_matches_a_direct_computation():
    torch.manual_seed(0)
    m = Transformer(small_cfg().model)
    m.train()
    data = torch.randint(0, 97, (6, 33))
    batches = [(data[i:i + 2, :-1], data[i:i + 2, 1:]) for i in range(0, 6, 2)]
    token_bytes = np.arange(97, dtype=np.int64) % 3 + 1
    res = evaluate(m, batches, token_bytes, "cpu")
    assert m.training  # mode restored
    with torch.no_grad():
        m.eval()
        logits = m.logits(data[:, :-1])
    y = data[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, 97), y.reshape(-1), reduction="sum").item()
    n = y.numel()
    assert res["eval_tokens"] == n
    assert math.isclose(res["val/loss"], ce / n, rel_tol=1e-5)
    assert math.isclose(res["val/perplexity"], math.exp(ce / n), rel_tol=1e-5)
    assert math.isclose(res["val/acc"], (logits.argmax(-1) == y).float().mean().item(), rel_tol=1e-6)
    assert math.isclose(res["val/bpb"], ce / math.log(2) / token_bytes[y.numpy()].sum(), rel_tol=1e-5)


# ---------------------------------------------------------------------------------------------------- sampling


@pytest.mark.slow
def test_generation_is_seeded_and_leaves_the_global_rng_alone():
    m = Transformer(small_cfg().model)
    idx = torch.tensor([[1, 2, 3]])
    torch.manual_seed(123)
    outs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(9)
        outs.append(generate_tokens(m, idx, 30, temperature=1.0, top_k=10, generator=g, vocab_limit=50))
    after = torch.rand(2)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(2))  # sampling drew nothing from the global RNG
    assert torch.equal(outs[0], outs[1]) and outs[0].shape == (1, 33)  # context cropped past sequence_length
    assert int(outs[0][0, 3:].max()) < 50
    g = torch.Generator().manual_seed(10)
    assert not torch.equal(generate_tokens(m, idx, 30, 1.0, 10, g), outs[0])
