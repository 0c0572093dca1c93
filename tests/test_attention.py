"""Attention variants: local / global_local windows against an explicitly masked softmax, no future leakage,
query shuffle causality (through the full Transformer), orthonormal Q/K/V, torch.compile, config refusals."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmsprint.config import RunConfig
from lmsprint.errors import ConfigError, cli_message
from lmsprint.model.loss import lm_loss
from lmsprint.model import attention as attn_mod
from lmsprint.model import check_model_config
from lmsprint.model.attention import (Attention, AttentionMasks, SlidingWindow, layer_pattern, local_heads_of_layer,
                                      make_block_mask, make_sdpa_mask, shuffle_queries)
from lmsprint.model.transformer import Transformer
from lmsprint.optim.optimizers import build_optimizer
from tiny import tiny_config

V, T = 97, 32


def small(model="base", **attn) -> RunConfig:
    return tiny_config(validate=False, model=model, n_embd=64, sequence_length=T, vocab_size=V, **attn)


def layer_mask(model_cfg, layer: int, T_: int, kernel: str = "sdpa"):
    """The mask a forward of length T_ gives layer `layer` (None: plain causal), through the kernel `kernel`."""
    p = layer_pattern(model_cfg, layer)
    if p is None or p.covers(T_):
        return None
    return make_sdpa_mask(p, T_, "cpu") if kernel == "sdpa" else make_block_mask(p, T_, "cpu")


def window_mask(T_: int, window: int, n_head: int, n_local: int) -> torch.Tensor:
    """Reference boolean mask (n_head, T_, T_) written out by hand: heads < n_local see the last `window` keys."""
    i = torch.arange(T_)
    causal = i[:, None] >= i[None, :]
    local = causal & ((i[:, None] - i[None, :]) < window)
    return torch.stack([local if h < n_local else causal for h in range(n_head)])


def reference_attention(attn: Attention, x: torch.Tensor, allowed) -> torch.Tensor:
    """Explicit softmax(QK^T/sqrt(d) masked) V from the module's own weights; allowed(h, i, j) -> bool."""
    B, T_, C = x.shape
    H, D = attn.n_head, attn.head_dim
    q, k, v = attn.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T_, H, D).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    mask = torch.tensor([[[allowed(h, i, j) for j in range(T_)] for i in range(T_)] for h in range(H)])
    scores = scores.masked_fill(~mask, float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v
    return attn.c_proj(y.transpose(1, 2).reshape(B, T_, C))


@pytest.mark.parametrize("kind,pattern,local_heads,layer,expect_local", [
    ("local", "", 0, 0, 4),
    ("global_local", "SL", 0, 0, 4),
    ("global_local", "SL", 0, 1, 0),
    ("global_local", "", 2, 0, 2),
    ("global_local", "SL", 1, 1, 1),
    ("global_local", "SL", 1, 2, 4),  # the pattern tiles over layers
])
def test_variants_equal_masked_softmax_reference(kind, pattern, local_heads, layer, expect_local):
    torch.manual_seed(0)
    cfg = small(attention=kind, attention_window=5, attention_pattern=pattern, local_heads=local_heads)
    assert local_heads_of_layer(cfg.model, layer) == expect_local
    attn = Attention(cfg.model, layer).eval()
    x = torch.randn(2, 12, 64)
    W = 5

    def allowed(h, i, j):
        return j <= i and (h >= expect_local or i - j < W)

    mask = layer_mask(cfg.model, layer, 12)
    assert (mask is None) == (expect_local == 0)
    torch.testing.assert_close(attn(x, None, mask), reference_attention(attn, x, allowed), atol=1e-5, rtol=1e-5)


def test_sdpa_masks_equal_the_hand_written_window():
    """`create_mask` of the pattern's mask_mod (the SDPA mask) is the window written out by hand."""
    for n_local in (4, 2):
        got = make_sdpa_mask(SlidingWindow(3, n_local, 4), 10, "cpu")
        assert got.shape == ((4, 10, 10) if n_local < 4 else (10, 10))
        assert torch.equal(got.expand(4, 10, 10), window_mask(10, 3, 4, n_local))


def test_masks_are_built_once_per_forward_and_shared_by_the_layers_of_a_pattern(monkeypatch):
    """SSL over 6 layers with one local head in the L layers: two patterns, so one forward builds two masks (cached
    for the next forward at that length), each passed to all of its layers; a window covering the sequence gives
    plain causal layers (None)."""
    cfg = small(attention="global_local", attention_pattern="SSL", local_heads=1, attention_window=5).model
    cfg.n_layer = 6
    masks = AttentionMasks(cfg)
    assert [sorted(layers) for _, layers in masks.groups] == [[0, 1, 3, 4], [2, 5]]
    built = []
    real = attn_mod._build_mask
    monkeypatch.setattr(attn_mod, "_build_mask", lambda *a: built.append(a) or real(*a))
    attn_mod._cached_mask.cache_clear()
    got = masks(12, torch.device("cpu"), dropout=False, grad=True)
    assert len(built) == 2
    assert got[0] is got[1] is got[3] is got[4] and got[2] is got[5] and got[0] is not got[2]
    assert got[0].shape == (12, 12) and got[2].shape == (4, 12, 12)
    assert masks(12, torch.device("cpu"), dropout=False, grad=True)[0] is got[0] and len(built) == 2
    assert masks(5, torch.device("cpu"), dropout=False, grad=True) == [None] * 6


def test_one_predicate_chooses_the_kernel():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    kernel = attn_mod.attention_kernel
    assert kernel("auto", cuda, dropout=False, grad=True) == "flex"
    assert kernel("auto", cuda, dropout=True, grad=True) == "sdpa"  # flex has no dropout
    assert kernel("auto", cpu, dropout=False, grad=False) == "sdpa"
    assert kernel("sdpa", cuda, dropout=False, grad=True) == "sdpa"
    assert kernel("flex", cpu, dropout=False, grad=False) == "flex"  # CPU inference through flex
    with pytest.raises(ConfigError, match="no backward pass on CPU"):
        kernel("flex", cpu, dropout=False, grad=True)
    with pytest.raises(ConfigError, match="dropout"):
        kernel("flex", cuda, dropout=True, grad=False)


def test_per_head_split_heads_match_local_and_causal():
    torch.manual_seed(1)
    split = Attention(small(attention="global_local", local_heads=2, attention_window=3).model).eval()
    q, k, v = torch.randn(3, 2, 4, 10, 16).unbind(0)
    y = split.attend(q, k, v, layer_mask(small(attention="global_local", local_heads=2, attention_window=3).model, 0, 10))
    local = F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask(10, 3, 4, 4))
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(y[:, :2], local[:, :2])
    torch.testing.assert_close(y[:, 2:], causal[:, 2:])
    assert not torch.allclose(local[:, :2], causal[:, :2])  # the window really cut something


def test_window_at_least_sequence_equals_causal():
    torch.manual_seed(2)
    causal = Attention(small().model).eval()
    local = Attention(small(attention="local", attention_window=12).model).eval()
    local.load_state_dict(causal.state_dict())
    x = torch.randn(2, 12, 64)
    assert layer_mask(small(attention="local", attention_window=12).model, 0, 12) is None
    torch.testing.assert_close(local(x), causal(x))
    # the explicit mask path agrees as well (window == T masks nothing but the future)
    q, k, v = torch.randn(3, 2, 4, 12, 16).unbind(0)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask(12, 12, 4, 4)),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("attn", [dict(attention="local", attention_window=4),
                                  dict(attention="global_local", attention_pattern="SL", local_heads=2,
                                       attention_window=3)])
def test_no_future_leakage(attn):
    torch.manual_seed(3)
    for layer in (0, 1):
        cfg = small(**attn).model
        mod = Attention(cfg, layer).eval()
        x = torch.randn(1, 16, 64, requires_grad=True)
        t = 7
        mod(x, None, layer_mask(cfg, layer, 16))[0, t].sum().backward()
        assert x.grad[0, t + 1:].abs().max() == 0
        assert x.grad[0, : t + 1].abs().max() > 0


def test_flex_block_mask_matches_sdpa_mask():
    """The FlexAttention mask_mod (used on CUDA) selects the same keys as the SDPA boolean mask (CPU forward)."""
    from torch.nn.attention.flex_attention import flex_attention

    torch.manual_seed(4)
    q, k, v = torch.randn(3, 1, 4, 256, 16).unbind(0)
    for n_local in (4, 1):
        bm = make_block_mask(SlidingWindow(40, n_local, 4), 256, "cpu")
        with torch.no_grad():
            y_flex = flex_attention(q, k, v, block_mask=bm)
        y_sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask(256, 40, 4, n_local))
        torch.testing.assert_close(y_flex, y_sdpa, atol=1e-5, rtol=1e-4)


def test_flex_model_path_forward_matches_sdpa_path():
    """The same model with `attn_backend` flex (FlexAttention block masks, CPU inference) and sdpa; flex with a
    backward pass on CPU is refused."""
    torch.manual_seed(5)
    m_sdpa = Transformer(small(attention="local", attention_window=9, attn_backend="sdpa").model).eval()
    m_flex = Transformer(small(attention="local", attention_window=9, attn_backend="flex").model).eval()
    m_flex.load_state_dict(m_sdpa.state_dict())
    x = torch.randint(0, V, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(m_flex(x)[0], m_sdpa(x)[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="no backward pass on CPU"):
        m_flex(x)


# ------------------------------------------------------------------ query shuffle


def test_shuffle_queries_sources_are_causally_safe():
    torch.manual_seed(6)
    B, T_, H, D = 4, 20, 2, 3
    # encode (b, t) in the query so the source of every row can be read back
    q = torch.zeros(B, T_, H, D)
    q[..., 0] = torch.arange(B)[:, None, None].float()
    q[..., 1] = torch.arange(T_)[None, :, None].float()
    out = shuffle_queries(q, 1.0, "batch")
    assert torch.equal(out[..., 1], q[..., 1])  # same position
    assert (out[..., 0] != q[..., 0]).all()  # another sequence
    out = shuffle_queries(q, 1.0, "past")
    assert torch.equal(out[..., 0], q[..., 0])  # same sequence
    src_t = out[:, :, 0, 1]
    assert (src_t[:, 1:] < torch.arange(1, T_)).all() and (src_t[:, 0] == 0).all()
    assert torch.equal(shuffle_queries(q, 0.0, "past"), q)
    # about frac of the rows move
    big = torch.arange(200.0)[:, None, None, None].expand(200, T_, H, D)
    moved = shuffle_queries(big, 0.3, "batch") != big
    assert 0.27 < moved.float().mean().item() < 0.33


@pytest.mark.parametrize("model", ["base", "llama2"])
@pytest.mark.parametrize("mode", ["batch", "past"])
def test_shuffle_keeps_loss_at_t_blind_to_later_tokens(model, mode):
    torch.manual_seed(7)
    cfg = small(model, shuffle_query_frac=0.5, shuffle_query_mode=mode)
    net = Transformer(cfg.model).train()
    captured = {}

    def keep(mod, inp, out):
        out.retain_grad()
        captured["emb"] = out

    net.wte.register_forward_hook(keep)
    idx = torch.randint(0, V, (4, T))
    h, _ = net(idx)
    t = 11
    logits = h[:, t] @ net.head_weight.t()
    F.cross_entropy(logits, idx[:, t]).backward()
    g = captured["emb"].grad
    assert g[:, t + 1:].abs().max() == 0  # no sequence's later tokens reach the loss at t
    assert g[:, : t + 1].abs().max() > 0
    if mode == "past":  # past mode never mixes sequences: one sequence's loss sees only its own tokens
        captured.clear()
        net.zero_grad()
        h, _ = net(idx)
        F.cross_entropy(h[0, t:t + 1] @ net.head_weight.t(), idx[0, t:t + 1]).backward()
        assert captured["emb"].grad[1:].abs().max() == 0


def test_shuffle_only_while_training():
    torch.manual_seed(8)
    plain = Transformer(small().model)
    shuf = Transformer(small(shuffle_query_frac=0.5).model)
    shuf.load_state_dict(plain.state_dict())
    idx = torch.randint(0, V, (4, T))
    plain.eval(), shuf.eval()
    torch.testing.assert_close(shuf(idx)[0], plain(idx)[0])
    plain.train(), shuf.train()
    assert not torch.allclose(shuf(idx)[0], plain(idx)[0])


# ------------------------------------------------------------------ orthonormal Q/K/V


@pytest.mark.slow
@pytest.mark.parametrize("opt", ["adamw", "muon", "lion"])
def test_orthogonal_qkv_stays_orthonormal_while_training(opt):
    torch.manual_seed(9)
    cfg = small("llama2", orthogonal_qkv=True)
    cfg.optim.opt, cfg.optim.lr, cfg.optim.weight_decay = opt, 3e-3, 0.1
    net = Transformer(cfg.model)
    before = net.blocks[0].attn.c_attn.weight.detach().clone()
    optim = build_optimizer(net, cfg.optim, "cpu")
    for _ in range(5):
        idx = torch.randint(0, V, (4, T))
        h, _ = net(idx[:, :-1])
        lm_loss(h, net.head_weight, idx[:, 1:]).loss.backward()
        optim.step()
        optim.zero_grad()
    eye = torch.eye(16)
    for block in net.blocks:
        W = block.attn.c_attn.weight  # (3 * n_head, head_dim, n_embd)
        assert W.shape == (12, 16, 64)
        assert (W @ W.mT - eye).abs().max() < 1e-5
    assert (net.blocks[0].attn.c_attn.weight - before).abs().max() > 1e-4  # it did train


def test_orthogonal_projection_is_one_matmul_over_heads():
    torch.manual_seed(10)
    attn = Attention(small(orthogonal_qkv=True).model)
    x = torch.randn(2, 5, 64)
    W = attn.c_attn.weight
    per_head = torch.einsum("btc,ndc->btnd", x, W).reshape(2, 5, 3 * 64)
    torch.testing.assert_close(attn.c_attn(x), per_head, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ compile, MoE, both models


@pytest.mark.slow
def test_fullgraph_compile_with_local_shuffle_orthogonal():
    """One graph (no breaks) for a block with per-head local windows (SDPA mask path), query shuffle and the
    orthogonal Q/K/V parametrization; forward and backward run and match eager."""
    torch._dynamo.reset()
    torch.manual_seed(11)
    cfg = small("llama2", attention="global_local", local_heads=1, attention_window=8, shuffle_query_frac=0.25,
                orthogonal_qkv=True)
    cfg.model.n_layer = 1
    net = Transformer(cfg.model).train()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    idx = torch.randint(0, V, (2, T))
    h, _ = compiled(idx)
    lm_loss(h, net.head_weight, idx).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    torch.manual_seed(0)
    h_eager, _ = net(idx)
    torch.manual_seed(0)
    h_comp, _ = compiled(idx)  # aot_eager draws the same shuffle masks from the same seed
    torch.testing.assert_close(h_comp, h_eager, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["base", "llama2"])
def test_all_options_with_moe(model):
    torch.manual_seed(12)
    cfg = small(model, attention="local", attention_window=6, shuffle_query_frac=0.3, shuffle_query_mode="past",
                orthogonal_qkv=True)
    cfg.model.moe.moe_num_experts, cfg.model.moe.moe_num_experts_per_tok = 4, 2
    net = Transformer(cfg.model).train()
    idx = torch.randint(0, V, (3, T))
    h, aux = net(idx)
    loss = lm_loss(h, net.head_weight, idx).loss + aux["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters() if p.requires_grad)


# ------------------------------------------------------------------ refusals


def check(cfg):
    check_model_config(cfg.model, cfg.train.device, cfg.train.batch_size)


def test_check_model_config_refuses_impossible_combinations():
    ok = small(attention="local", shuffle_query_frac=0.2, orthogonal_qkv=True)
    check(ok)
    bad = small(shuffle_query_frac=0.2, shuffle_query_mode="batch")
    bad.train.batch_size = 1
    with pytest.raises(ConfigError, match="shuffle_query_mode past") as e:
        check(bad)
    assert "raise --batch_size or use --shuffle_query_mode past" in cli_message(e.value)
    bad.model.attn.shuffle_query_mode = "past"
    check(bad)
    flex = small(attention="local", attn_backend="flex")
    flex.train.device = "cpu"
    with pytest.raises(ConfigError, match="attn_backend sdpa") as e:
        check(flex)
    assert cli_message(e.value) == ("--attn_backend flex has no backward pass on CPU; use --attn_backend sdpa "
                                    "(or auto)")
    flex.train.device, flex.model.dropout = "cuda", 0.1
    with pytest.raises(ConfigError, match="dropout"):
        check(flex)


@pytest.mark.slow
def test_compiled_flex_with_rope_equals_sdpa():
    """Inductor-compiled FlexAttention after RoPE, with v a strided view of the fused QKV output, equals SDPA with the
    window mask (inference: flex has no CPU backward). Without the layer's .contiguous(), torch 2.13's CPU flex
    kernel read v wrongly here (max error ~2)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    flex = tiny_config(model="llama2", n_embd=64, n_head=4, sequence_length=128, attention="local",
                       attention_window=32, attn_backend="flex").model
    sdpa = tiny_config(model="llama2", n_embd=64, n_head=4, sequence_length=128, attention="local",
                       attention_window=32, attn_backend="sdpa").model
    a, b = Attention(flex, 0).eval(), Attention(sdpa, 0).eval()
    b.load_state_dict(a.state_dict())
    net = Transformer(flex)
    rope = (net.rope_cos[:128], net.rope_sin[:128])
    x = torch.randn(2, 128, 64)
    with torch.no_grad():
        want = b(x, rope, layer_mask(sdpa, 0, 128))
        got = torch.compile(a, fullgraph=True)(x, rope, layer_mask(flex, 0, 128, "flex"))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_model_builds_its_block_masks_in_the_graph_and_eager_calls_do_not_recompile_it(monkeypatch):
    """Under torch.compile the model's forward builds its FlexAttention block masks inside the graph (one graph, no
    break, no Python-side cache touched while tracing), and eager calls at other lengths afterwards (generation) do
    not make the compiled model recompile. Equal to the SDPA model."""
    torch._dynamo.reset()
    cfg = tiny_config(model="llama2", n_embd=64, n_head=4, n_layer=2, sequence_length=128, attention="local",
                      attention_window=32, attn_backend="flex")
    net = Transformer(cfg.model).eval()
    sdpa_cfg = tiny_config(model="llama2", n_embd=64, n_head=4, n_layer=2, sequence_length=128, attention="local",
                           attention_window=32, attn_backend="sdpa")
    compiles = []

    def backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    compiled = torch.compile(net, backend=backend, fullgraph=True)
    x = torch.randint(0, 64, (2, 128))
    attn_mod._cached_mask.cache_clear()
    with torch.no_grad():
        ref_net = Transformer(sdpa_cfg.model).eval()
        ref_net.load_state_dict(net.state_dict())
        got, _ = compiled(x)
        assert len(compiles) == 1 and attn_mod._cached_mask.cache_info().currsize == 0  # built in the graph
        torch.testing.assert_close(got, ref_net(x)[0], rtol=1e-4, atol=1e-5)
        net(x[:, :100])  # eager calls at other lengths fill the eager cache
        net(x[:, :90])
        assert attn_mod._cached_mask.cache_info().currsize == 3  # the SDPA reference's mask and two lengths
        compiled(x)
    assert len(compiles) == 1, "the compiled model recompiled after an eager call"
