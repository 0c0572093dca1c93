"""lr schedules: cos/linear equal torch's OneCycleLR (llm-baselines) step by step; wsd and none shapes;
time-based progress uses the continuous limit."""

import math

import pytest
import torch

from lmsprint.config import OptimConfig, RunConfig
from lmsprint.errors import ConfigError, cli_message
from lmsprint.optim import check_optim_config
from lmsprint.optim.schedules import lr_multiplier


def onecycle_lrs(total, cfg, strategy):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.warmup_percent,
                                                anneal_strategy=strategy, cycle_momentum=False,
                                                div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("kind,strategy", [("cos", "cos"), ("linear", "linear")])
@pytest.mark.parametrize("total,warmup,div,final_div", [(1000, 0.05, 1e2, 0.1), (300, 0.2, 25.0, 1e4),
                                                         (64, 0.0, 1e2, 0.1)])
def test_cos_and_linear_equal_onecycle(kind, strategy, total, warmup, div, final_div):
    cfg = OptimConfig(scheduler=kind, lr=3e-3, warmup_percent=warmup, div_factor=div, final_div_factor=final_div)
    ref = onecycle_lrs(total, cfg, strategy)
    ours = [cfg.lr * lr_multiplier(s / total, cfg, total_steps=total) for s in range(total)]
    assert max(abs(a - b) for a, b in zip(ours, ref)) < 1e-12 * cfg.lr + 1e-15
    # time-based progress (no step count): the continuous limit, within O(1/total) of OneCycleLR
    cont = [cfg.lr * lr_multiplier(s / total, cfg) for s in range(total)]
    tol = 1.5 / (total * warmup) if warmup else 2.0 / total  # one step of the steepest ramp
    assert max(abs(a - b) for a, b in zip(cont, ref)) < cfg.lr * tol


def test_cos_endpoints_are_llm_baselines():
    cfg = OptimConfig(scheduler="cos")  # lr/100 at the start, lr at the end of warmup, lr/10 at the end
    assert lr_multiplier(0.0, cfg) == pytest.approx(0.01)
    assert lr_multiplier(cfg.warmup_percent, cfg) == pytest.approx(1.0)
    assert lr_multiplier(1.0, cfg) == pytest.approx(0.1)
    assert lr_multiplier(1.7, cfg) == lr_multiplier(1.0, cfg)  # clamped (time budget overrun)
    xs = [i / 200 for i in range(201)]
    ys = [lr_multiplier(x, cfg) for x in xs]
    peak = ys.index(max(ys))
    assert all(a <= b for a, b in zip(ys[:peak], ys[1:peak + 1])) and all(a >= b for a, b in zip(ys[peak:], ys[peak + 1:]))


def test_wsd_shape():
    cfg = OptimConfig(scheduler="wsd", warmup_percent=0.1, wsd_decay_frac=0.2, div_factor=100.0)
    assert lr_multiplier(0.0, cfg) == pytest.approx(0.01)
    assert lr_multiplier(0.05, cfg) == pytest.approx(0.01 + 0.99 * 0.5)
    assert all(lr_multiplier(x, cfg) == 1.0 for x in (0.1, 0.3, 0.5, 0.8))
    assert lr_multiplier(0.9, cfg) == pytest.approx(0.5)
    assert lr_multiplier(1.0, cfg) == 0.0
    no_decay = OptimConfig(scheduler="wsd", warmup_percent=0.1, wsd_decay_frac=0.0)
    assert lr_multiplier(1.0, no_decay) == 1.0  # warmup + constant


def test_none_is_constant_without_warmup():
    cfg = OptimConfig(scheduler="none", warmup_percent=0.3)
    assert {lr_multiplier(x / 10, cfg) for x in range(11)} == {1.0}


def test_progress_from_steps_or_time_is_the_same_function():
    cfg = OptimConfig(scheduler="cos")
    # 400 of 1000 steps and 120 s of a 300 s budget are the same point of the schedule
    assert lr_multiplier(400 / 1000, cfg) == lr_multiplier(120.0 / 300.0, cfg)
    assert math.isclose(lr_multiplier(0.4, cfg, total_steps=1000), lr_multiplier(0.4, cfg), rel_tol=1e-2)


def test_wsd_phases_must_fit():
    cfg = RunConfig()
    cfg.optim.scheduler, cfg.optim.warmup_percent, cfg.optim.wsd_decay_frac = "wsd", 0.5, 0.6
    with pytest.raises(ConfigError, match="wsd_decay_frac") as e:
        check_optim_config(cfg)
    assert cli_message(e.value).startswith("--warmup_percent 0.5 + --wsd_decay_frac 0.6 exceed 1")
    cfg.optim.wsd_decay_frac = 0.5
    check_optim_config(cfg)


@pytest.mark.parametrize("argv,needle", [
    # the final lr of OneCycle is lr / div_factor / final_div_factor: 1e-300 made it 1e298 x lr, a float32 overflow
    # inside the optimizer at the first step (RuntimeError "value cannot be converted to type float")
    (["--final_div_factor", "1e-300"], "--final_div_factor 1e-300 with --div_factor 100 makes the final lr"),
    (["--final_div_factor", "0.001"], "larger than the peak --lr, so the schedule would climb"),
    (["--scheduler", "linear", "--div_factor", "2", "--final_div_factor", "0.1"], "div_factor x final_div_factor >= 1"),
    (["--div_factor", "0.5"], "--div_factor 0.5 makes the start lr (lr / div_factor) larger than the peak --lr"),
    (["--scheduler", "wsd", "--div_factor", "1e-300"], "--div_factor 1e-300 makes the start lr"),
    (["--lr", "1e39"], "--lr 1e+39 is larger than the largest float32"),
    (["--opt", "muon", "--muon_lr", "1e39"], "--muon_lr 1e+39 is larger than the largest float32"),
])
def test_a_schedule_never_climbs_above_its_peak(tmp_path, in_process, argv, needle):
    p = in_process("train", "--config_format", "demo", *argv, "--results_base_folder", "exps")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and needle in p.stderr, p.stderr
    assert not (tmp_path / "exps").exists()


def test_schedules_that_end_at_or_below_their_start_are_fine():
    for kw in ({"div_factor": 100.0, "final_div_factor": 0.01}, {"div_factor": 1.0, "final_div_factor": 1.0},
               {"scheduler": "none", "div_factor": 0.5, "final_div_factor": 1e-300}):
        cfg = OptimConfig(**kw)
        check_optim_config(cfg)
        assert max(lr_multiplier(p / 100, cfg, 100) for p in range(101)) <= 1.0
