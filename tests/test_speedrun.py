"""The speedrun ingredients, each a separate option: QK-norm, ReLU² MLP, zero-initialised projections, logit
soft-capping (chunked loss = unchunked reference, in values and gradients), per-role learning rates, Muon
momentum warm-up (applied each step with the lr), and the `speedrun` preset (valid at its own shape, shrunk by
flags, and trained through the real CLI)."""

import math
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lmsprint import keys as K
from lmsprint import rundir
from lmsprint.config import RunConfig, build_config
from lmsprint.model.attention import Attention
from lmsprint.model.loss import lm_loss, reference_lm_loss, softcap_logits
from lmsprint.model.mlp import Relu2MLP, make_dense_mlp
from lmsprint.model.moe import MoE
from lmsprint.model.transformer import Transformer
from lmsprint.optim.optimizers import build_optimizer
from lmsprint.optim.schedules import apply_schedule, muon_momentum
from tiny import tiny_config

V, T = 61, 16


def small(**kw) -> RunConfig:
    return tiny_config(**{"model": "llama2", "sequence_length": T, "vocab_size": V, **kw})


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


# ------------------------------------------------------------------ QK-norm


def test_qk_norm_makes_attention_invariant_to_query_key_scale():
    torch.manual_seed(0)
    x = torch.randn(2, T, 32)
    for qk_norm, invariant in ((True, True), (False, False)):
        cfg = small(qk_norm=qk_norm).model
        attn = Attention(cfg).eval()
        y0 = attn(x)
        with torch.no_grad():
            attn.c_attn.weight[:64] *= 5.0  # q and k rows (v untouched)
        y1 = attn(x)
        assert torch.allclose(y0, y1, atol=1e-5) == invariant


def test_qk_norm_matches_manual_per_head_rms():
    torch.manual_seed(1)
    cfg = small(qk_norm=True, pos="learned").model  # no RoPE: compare against a plain reference
    attn = Attention(cfg).eval()
    x = torch.randn(2, T, 32)
    q, k, v = attn.c_attn(x).split(32, dim=2)
    heads = lambda t: t.view(2, T, 4, 8).transpose(1, 2)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    q = q / q.pow(2).mean(-1, keepdim=True).add(torch.finfo(q.dtype).eps).sqrt()
    k = k / k.pow(2).mean(-1, keepdim=True).add(torch.finfo(k.dtype).eps).sqrt()
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, T, 32)
    assert torch.allclose(attn(x), attn.c_proj(ref), atol=1e-5)


# ------------------------------------------------------------------ ReLU² MLP


def test_relu2_mlp_is_relu_squared_with_4x_hidden():
    cfg = small(mlp="relu2").model
    assert cfg.mlp_hidden == 4 * 32
    mlp = make_dense_mlp("relu2", 32, cfg.mlp_hidden, False, 0.0)
    assert isinstance(mlp, Relu2MLP)
    x = torch.randn(3, 5, 32)
    y, aux = mlp(x)
    assert aux == {} and torch.allclose(y, mlp.c_proj(F.relu(mlp.c_fc(x)) ** 2))
    net = Transformer(cfg)
    h, _ = net(torch.randint(0, V, (2, T)))
    assert h.shape == (2, T, 32)


def test_relu2_moe_experts_match_dense_relu2():
    cfg = small(mlp="relu2", moe_num_experts=2, moe_num_experts_per_tok=2).model
    moe = MoE(cfg)
    rows = torch.randn(2 * 4, 32)
    out = moe._experts(rows, None, None)
    ref = torch.cat([F.relu(rows[e * 4:(e + 1) * 4] @ moe.w_in[e].t()).square() @ moe.w_out[e].t()
                     for e in range(2)])
    assert torch.allclose(out, ref, atol=1e-5)


# ------------------------------------------------------------------ zero-initialised projections


def test_zero_init_proj_zeros_residual_projections_and_untied_head_and_still_learns():
    torch.manual_seed(0)
    net = Transformer(small(zero_init_proj=True, tie_embeddings=False).model)
    for blk in net.blocks:
        assert blk.attn.c_proj.weight.abs().sum() == 0 and blk.mlp.c_proj.weight.abs().sum() == 0
        assert blk.attn.c_attn.weight.std() > 0.01
    assert net.lm_head.weight.abs().sum() == 0
    idx = torch.randint(0, V, (2, T + 1))
    h, _ = net(idx[:, :-1])
    out = lm_loss(h, net.head_weight, idx[:, 1:])
    assert math.isclose(out.loss.item(), math.log(V), rel_tol=1e-5)  # zero head: uniform prediction
    out.loss.backward()
    assert net.lm_head.weight.grad.abs().sum() > 0  # the head gets a gradient at step 0 ...
    default = Transformer(small().model)
    assert default.blocks[0].attn.c_proj.weight.std() > 0  # ... and the default init is unchanged


# ------------------------------------------------------------------ logit soft-capping


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_softcap_chunked_loss_equals_reference_in_values_and_grads(eps):
    torch.manual_seed(0)
    n, d, cap = 40, 16, 2.0
    h = (torch.randn(n, d, dtype=torch.float64) * 3).requires_grad_()
    w = torch.randn(V, d, dtype=torch.float64).requires_grad_()
    t = torch.randint(0, V, (n,))
    out = lm_loss(h, w, t, label_smoothing=eps, chunk=7, softcap=cap)
    gh, gw = torch.autograd.grad(out.loss, (h, w))
    ref = reference_lm_loss(h, w, t, label_smoothing=eps, softcap=cap)
    rh, rw = torch.autograd.grad(ref.loss, (h, w))
    assert torch.allclose(out.loss, ref.loss) and torch.allclose(out.ce_sum, ref.ce_sum)
    assert out.correct == ref.correct
    assert torch.allclose(gh, rh) and torch.allclose(gw, rw)
    with torch.no_grad():  # evaluation path: plain CE of the capped logits
        ev = lm_loss(h, w, t, chunk=7, softcap=cap)
    capped = cap * torch.tanh((h @ w.t()) / cap)
    assert torch.allclose(ev.ce_sum.double(), F.cross_entropy(capped, t, reduction="sum"), rtol=1e-5)
    assert not torch.allclose(ev.ce_sum.double(), F.cross_entropy(h @ w.t(), t, reduction="sum"), rtol=1e-2)


def test_softcap_zero_is_identity_and_model_logits_are_bounded():
    z = torch.randn(4, 9) * 100
    assert torch.equal(softcap_logits(z, 0.0), z)
    net = Transformer(small(logit_softcap=15.0).model)
    with torch.no_grad():
        net.wte.weight.mul_(1e3)
        logits = net.logits(torch.randint(0, V, (1, T)))
    assert logits.abs().max() <= 15.0 and logits.abs().max() > 14.0


# ------------------------------------------------------------------ per-role learning rates and Muon momentum


@pytest.mark.parametrize("opt", ["adamw", "muon"])
def test_embed_and_head_lr_set_their_groups_peak_lr(opt):
    cfg = small(tie_embeddings=False, opt=opt, lr=1e-3, muon_lr=0.05, embed_lr=0.1, head_lr=0.004)
    groups = {g["role"]: g for g in build_optimizer(Transformer(cfg.model), cfg.optim).param_groups}
    assert groups["embed"]["base_lr"] == 0.1 and groups["head"]["base_lr"] == 0.004
    assert groups["other"]["base_lr"] == 1e-3
    assert groups["matrix"]["base_lr"] == (0.05 if opt == "muon" else 1e-3)
    plain = small(tie_embeddings=False, opt=opt, lr=1e-3)  # 0 = follow --lr
    groups = {g["role"]: g for g in build_optimizer(Transformer(plain.model), plain.optim).param_groups}
    assert groups["embed"]["base_lr"] == groups["head"]["base_lr"] == 1e-3


def test_muon_momentum_warmup_is_linear_then_constant():
    o = small(opt="muon", muon_momentum=0.95, muon_momentum_start=0.85, muon_momentum_warmup=0.2).optim
    assert muon_momentum(0.0, o) == pytest.approx(0.85)
    assert muon_momentum(0.1, o) == pytest.approx(0.90)
    assert muon_momentum(0.2, o) == pytest.approx(0.95) and muon_momentum(0.9, o) == pytest.approx(0.95)
    o.muon_momentum_warmup = 0.0
    assert muon_momentum(0.0, o) == 0.95


def test_apply_schedule_sets_lr_on_every_group_and_momentum_on_muons_only():
    cfg = small(opt="muon", lr=1e-3, muon_lr=0.02, muon_momentum_warmup=0.5, muon_momentum_start=0.8,
                muon_momentum=0.9, scheduler="none")
    opt = build_optimizer(Transformer(cfg.model), cfg.optim)
    apply_schedule(opt.param_groups, 0.25, cfg.optim)
    by_role = {g["role"]: g for g in opt.param_groups}
    assert by_role["matrix"]["momentum"] == pytest.approx(0.85) and by_role["matrix"]["lr"] == 0.02
    assert "momentum" not in by_role["embed"] and by_role["embed"]["lr"] == 1e-3  # AdamW keeps its betas
    apply_schedule(opt.param_groups, 0.75, cfg.optim)
    assert by_role["matrix"]["momentum"] == pytest.approx(0.9)
    adamw = small(opt="adamw", muon_momentum_warmup=0.5)  # no Muon: nothing but the lr is touched
    opt = build_optimizer(Transformer(adamw.model), adamw.optim)
    apply_schedule(opt.param_groups, 0.25, adamw.optim)
    assert all("momentum" not in g for g in opt.param_groups)


# ------------------------------------------------------------------ the preset


def test_speedrun_preset_is_valid_at_its_shape_and_when_shrunk():
    cfg = build_config({"config_format": "speedrun"})
    m = cfg.model
    assert (m.n_layer, m.n_embd, m.sequence_length, cfg.train.batch_size, cfg.train.acc_steps) == (12, 768, 512, 32, 4)
    assert cfg.data.dataset == "slimpajama"
    assert (m.model, m.mlp_kind, m.tie_embeddings, cfg.optim.opt, cfg.optim.scheduler) == \
        ("llama2", "relu2", False, "muon", "wsd")
    assert build_config({"config_format": "base"}).optim.opt == "adamw"  # base is untouched
    shrunk = build_config({"config_format": "speedrun", "n_layer": 4, "n_embd": 128, "n_head": 4,
                           "sequence_length": 128, "batch_size": 16, "acc_steps": 1, "dataset": "shakespeare",
                           "time_budget": "60s"})
    net = Transformer(shrunk.model)
    build_optimizer(net, shrunk.optim)
    h, _ = net(torch.randint(0, 50257, (1, 128)))
    assert h.shape == (1, 128, 128)


@pytest.mark.slow
def test_speedrun_preset_with_every_ingredient_trains_through_the_cli(tmp_path):
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog and runs away from home".split()
    (tmp_path / "tiny.txt").write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(300)))
    flags = ["--config_format", "speedrun", "--dataset", "tiny.txt", "--data_dir", "dc", "--n_layer", "1",
             "--n_embd", "16", "--n_head", "2", "--sequence_length", "16", "--batch_size", "4", "--acc_steps", "1",
             "--iterations", "6", "--eval_freq", "3", "--eval_tokens", "64", "--sample_tokens", "4",
             "--eval_seq_prefix", "the", "--qk_norm", "true", "--zero_init_proj", "true", "--logit_softcap", "15",
             "--muon_momentum_warmup", "0.5", "--embed_lr", "0.02", "--head_lr", "0.004", "--quiet",
             "--results_base_folder", "exps", "--exp_name", "sr"]
    p = subprocess.run([sys.executable, "-m", "lmsprint", "train", *flags], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    run = str(tmp_path / "exps" / "sr")
    cfg = rundir.read_config(run)
    assert cfg.config_format == "speedrun" and cfg.model.mlp_kind == "relu2" and cfg.model.qk_norm
    assert cfg.model.logit_softcap == 15.0 and cfg.optim.muon_momentum_warmup == 0.5 and cfg.optim.opt == "muon"
    summary = rundir.read_summary(run)
    assert summary["status"] == "complete" and summary["iterations_done"] == 6
    assert math.isfinite(summary[K.FINAL][K.VAL_LOSS])
