"""Optimizers: parameter groups and weight decay, LAMB and Lion against their papers' update rules on
hand-computed steps, Muon + AdamW as one optimizer, exact checkpoint resume for every optimizer, the registry's state sizes, clear errors."""

import sys

import pytest
import torch
import torch.nn as nn

from lmsprint.config import RunConfig, apply_values
from lmsprint.errors import CheckpointError, ConfigError, UserError, cli_message
from lmsprint.model.loss import lm_loss
from lmsprint.model.transformer import Transformer
from lmsprint.optim import check_optim_config, optimizer_state_bytes
from lmsprint.optim.optimizers import OPTIMIZERS, CombinedOptimizer, build_optimizer, param_roles
from tiny import tiny_config

V, T = 61, 16


def small(model="base", **model_kw) -> RunConfig:
    return tiny_config(validate=False, model=model, n_layer=1, sequence_length=T, vocab_size=V, **model_kw)


def train_steps(net, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        idx = torch.randint(0, V, (3, T + 1), generator=g)
        h, aux = net(idx[:, :-1])
        loss = lm_loss(h, net.head_weight, idx[:, 1:]).loss + (aux["loss"] if aux else 0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


# ------------------------------------------------------------------ groups


def test_param_groups_decay_only_weight_matrices_and_experts():
    cfg = small("llama2", bias=True, tie_embeddings=False)
    cfg.model.moe.moe_num_experts = 4
    net = Transformer(cfg.model)
    roles = {name: role for name, (role, _) in param_roles(net).items()}
    assert roles["wte.weight"] == "embed" and roles["lm_head.weight"] == "head"
    assert roles["blocks.0.attn.c_attn.weight"] == "matrix" and roles["blocks.0.attn.c_attn.bias"] == "other"
    assert roles["blocks.0.ln_1.weight"] == "other"
    assert roles["blocks.0.mlp.w_in"] == "expert" and roles["blocks.0.mlp.w_out"] == "expert"
    assert roles["blocks.0.mlp.b_in"] == "other"  # (E, h) expert bias: no decay, no Muon
    opt = build_optimizer(net, cfg.optim, "cpu")
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
    for g in opt.param_groups:
        assert g["base_lr"] == cfg.optim.lr
        assert g["weight_decay"] == (cfg.optim.weight_decay if g["role"] in ("matrix", "expert", "head") else 0.0)
    assert opt.defaults["foreach"] is True


def test_tied_head_is_not_decayed_and_counted_once():
    net = Transformer(small().model)
    opt = build_optimizer(net, small().optim, "cpu")
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(net.parameters()))
    emb = next(g for g in opt.param_groups if any(p is net.head_weight for p in g["params"]))
    assert emb["role"] == "embed" and emb["weight_decay"] == 0.0


def test_adamw_is_fused_on_cuda():
    opt = build_optimizer(Transformer(small().model), small().optim, "cuda")
    assert opt.defaults["fused"] is True


def test_muon_owns_hidden_matrices_adamw_the_rest():
    cfg = small("llama2", tie_embeddings=False)
    cfg.model.moe.moe_num_experts = 4
    cfg.optim.opt, cfg.optim.muon_lr, cfg.optim.muon_momentum = "muon", 0.05, 0.9
    net = Transformer(cfg.model)
    opt = build_optimizer(net, cfg.optim, "cpu")
    assert isinstance(opt, CombinedOptimizer) and isinstance(opt, torch.optim.Optimizer)
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    assert muon.param_groups[0]["base_lr"] == 0.05 and muon.param_groups[0]["momentum"] == 0.9
    in_adam = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert {id(net.wte.weight), id(net.lm_head.weight), id(net.blocks[0].mlp.w_in)} <= in_adam
    # the loop's contract: setting lr on the shared groups reaches the inner optimizers
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * 0.5
    assert muon.param_groups[0]["lr"] == 0.025 and adamw.param_groups[0]["lr"] == cfg.optim.lr * 0.5
    train_steps(net, opt, 2, seed=0)
    assert len(opt.state) == len(list(net.parameters()))


# ------------------------------------------------------------------ exact resume


@pytest.mark.parametrize("name", ["adamw", "sgd", "lamb", "lion", "muon"])
def test_checkpoint_resume_is_exact(name):
    cfg = small("llama2")
    cfg.optim.opt, cfg.optim.nesterov = name, True
    torch.manual_seed(0)
    net = Transformer(cfg.model)
    opt = build_optimizer(net, cfg.optim, "cpu")
    train_steps(net, opt, 2, seed=1)
    saved_model = {k: v.clone() for k, v in net.state_dict().items()}
    for g in opt.param_groups:  # a non-trivial schedule value must survive the round trip too
        g["lr"] = g["base_lr"] * 0.3
    saved_opt = torch.load(_roundtrip(opt.state_dict()), weights_only=False)
    train_steps(net, opt, 2, seed=2)

    torch.manual_seed(123)  # different init: everything must come from the checkpoint
    net2 = Transformer(cfg.model)
    net2.load_state_dict(saved_model)
    opt2 = build_optimizer(net2, cfg.optim, "cpu")
    opt2.load_state_dict(saved_opt)
    assert [g["lr"] for g in opt2.param_groups] == [g["base_lr"] * 0.3 for g in opt2.param_groups]
    train_steps(net2, opt2, 2, seed=2)
    for (k, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
        assert torch.equal(a, b), k


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_combined_state_refuses_a_different_optimizer():
    cfg = small()
    cfg.optim.opt = "muon"
    muon = build_optimizer(Transformer(cfg.model), cfg.optim, "cpu")
    adamw = build_optimizer(Transformer(cfg.model), small().optim, "cpu")
    with pytest.raises(CheckpointError, match="same opt"):
        muon.load_state_dict(adamw.state_dict())


# ------------------------------------------------------------------ update rules by hand


class TwoParams(nn.Module):
    """A 2-D weight (decayed) and a 1-D norm-like weight (not decayed)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Linear(3, 2, bias=False)
        self.g = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
        with torch.no_grad():
            self.w.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.5]]))
        self.double()


GRADS = [(torch.tensor([[0.1, -0.2, 0.3], [0.4, 0.0, -0.6]]), torch.tensor([0.3, -0.1, 0.2])),
         (torch.tensor([[-0.5, 0.1, 0.2], [0.3, -0.2, 0.1]]), torch.tensor([-0.2, 0.4, 0.0])),
         (torch.tensor([[0.2, 0.2, -0.1], [0.0, 0.5, 0.3]]), torch.tensor([0.1, 0.1, -0.3]))]
MULTS = [0.5, 1.0, 0.25]  # lr multipliers, set through group["lr"] = base_lr * m as the loop does


def run_hand_steps(opt_name, **optim_kw):
    net = TwoParams()
    cfg = RunConfig().optim
    cfg.opt, cfg.lr, cfg.weight_decay, cfg.beta1, cfg.beta2, cfg.eps = opt_name, 0.1, 0.2, 0.9, 0.99, 1e-6
    for k, v in optim_kw.items():
        setattr(cfg, k, v)
    opt = build_optimizer(net, cfg, "cpu")
    for (gw, gg), m in zip(GRADS, MULTS):
        net.w.weight.grad, net.g.grad = gw.double().clone(), gg.double().clone()
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * m
        opt.step()
    return net, cfg


def lamb_reference(x, grads, lr, wd, b1, b2, eps, clamp):
    """You et al. 2019, Algorithm 2 (LAMB), without bias correction: m, v moments; r = m / (sqrt(v) + eps);
    u = r + wd * x; x <- x - lr * phi(||x||) / ||u|| * u with phi(z) = min(z, clamp)."""
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    for g, mult in zip(grads, MULTS):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = m / (v.sqrt() + eps) + wd * x
        phi = min(x.norm().item(), clamp)
        x = x - lr * mult * phi / (u.norm().item() + eps) * u
    return x


@pytest.mark.parametrize("clamp", [10.0, 1.5])
def test_lamb_matches_the_paper_by_hand(clamp):
    net, cfg = run_hand_steps("lamb", lamb_clamp=clamp)
    w0, g0 = TwoParams().w.weight.detach(), TwoParams().g.detach()
    ref_w = lamb_reference(w0, [g[0].double() for g in GRADS], 0.1, 0.2, 0.9, 0.99, 1e-6, clamp)
    ref_g = lamb_reference(g0, [g[1].double() for g in GRADS], 0.1, 0.0, 0.9, 0.99, 1e-6, clamp)
    torch.testing.assert_close(net.w.weight.detach(), ref_w, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(net.g.detach(), ref_g, atol=1e-12, rtol=1e-10)
    if clamp < 10:  # ||w0|| ~ 3.9 > 1.5: the clamp changed the step
        ref_unclamped = lamb_reference(w0, [g[0].double() for g in GRADS], 0.1, 0.2, 0.9, 0.99, 1e-6, 10.0)
        assert not torch.allclose(ref_w, ref_unclamped)


def lion_reference(x, grads, lr, wd, b1, b2):
    """Chen et al. 2023, Algorithm 2 (Lion): c = b1 m + (1 - b1) g; x <- x - lr (sign(c) + wd x);
    m <- b2 m + (1 - b2) g."""
    m = torch.zeros_like(x)
    for g, mult in zip(grads, MULTS):
        c = b1 * m + (1 - b1) * g
        x = x - lr * mult * (torch.sign(c) + wd * x)
        m = b2 * m + (1 - b2) * g
    return x


def test_lion_matches_the_paper_by_hand():
    net, cfg = run_hand_steps("lion")
    w0, g0 = TwoParams().w.weight.detach(), TwoParams().g.detach()
    torch.testing.assert_close(net.w.weight.detach(), lion_reference(w0, [g[0].double() for g in GRADS], 0.1, 0.2,
                                                                     0.9, 0.99), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(net.g.detach(), lion_reference(g0, [g[1].double() for g in GRADS], 0.1, 0.0, 0.9,
                                                              0.99), atol=1e-12, rtol=1e-10)


def test_sgd_nesterov_by_hand():
    net, cfg = run_hand_steps("sgd", momentum=0.9, nesterov=True)
    x, buf = TwoParams().w.weight.detach(), None
    for (g, _), mult in zip(GRADS, MULTS):
        d = g.double() + 0.2 * x  # SGD's (coupled) weight decay
        buf = d if buf is None else 0.9 * buf + d
        x = x - 0.1 * mult * (d + 0.9 * buf)
    torch.testing.assert_close(net.w.weight.detach(), x, atol=1e-12, rtol=1e-10)


# ------------------------------------------------------------------ errors


def test_missing_pytorch_optimizer_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # makes `import pytorch_optimizer` fail
    cfg = small()
    cfg.optim.opt = "lion"
    with pytest.raises(UserError, match="pip install pytorch-optimizer"):
        build_optimizer(Transformer(cfg.model), cfg.optim, "cpu")


def test_check_optim_config_optimizer_rules():
    cfg = small()
    cfg.optim.opt, cfg.optim.nesterov, cfg.optim.momentum = "sgd", True, 0.0
    with pytest.raises(ConfigError, match="nesterov needs momentum") as e:
        check_optim_config(cfg)
    assert cli_message(e.value).startswith("--nesterov needs --momentum > 0")
    cfg.optim.momentum = 0.9
    check_optim_config(cfg)
    check_optim_config(cfg.optim)  # an OptimConfig alone works too
    cfg.optim.opt = "adamax"
    with pytest.raises(ConfigError) as e:
        build_optimizer(Transformer(cfg.model), cfg.optim, "cpu")
    assert cli_message(e.value) == "--opt 'adamax' is not one of: " + ", ".join(OPTIMIZERS)


def _state_numel(opt) -> int:
    """Elements of every tensor an optimizer holds in its state (step counters excluded)."""
    return sum(v.numel() for st in opt.state.values() for k, v in st.items()
               if torch.is_tensor(v) and k != "step" and v.ndim > 0)


@pytest.mark.parametrize("name,kw", [("adamw", {}), ("sgd", {"momentum": 0.9}), ("sgd", {"momentum": 0.0}),
                                     ("lamb", {}), ("lion", {}), ("muon", {})])
def test_state_bytes_match_what_the_optimizer_holds(name, kw):
    """The registry's state size is what the optimizer really allocates after a step (fp32 state)."""
    if name in ("lamb", "lion"):
        pytest.importorskip("pytorch_optimizer")  # optional dependency of lmsprint
    cfg = small(moe_num_experts=2, moe_num_experts_per_tok=1, tie_embeddings=False)
    apply_values(cfg, {"opt": name, **kw})
    torch.manual_seed(0)
    net = Transformer(cfg.model)
    opt = build_optimizer(net, cfg.optim, "cpu")
    train_steps(net, opt, 1, seed=0)
    assert optimizer_state_bytes(cfg.optim, net) == 4 * _state_numel(opt)
    n = sum(p.numel() for p in net.parameters())
    assert optimizer_state_bytes(cfg.optim, n) >= optimizer_state_bytes(cfg.optim, net)
