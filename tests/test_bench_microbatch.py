"""Micro-batching (lmsprint.training.step): resolution of --micro_batch and gradient equality across splits."""

import pytest
import torch

from lmsprint.errors import UserError
from lmsprint.model.transformer import Transformer
from lmsprint.training.step import LossHead, accumulate_gradients, resolve_micro_batch
from tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = {"n_embd": 64, "vocab_size": 128, "acc_steps": 4}  # overrides of the shared tiny shape (tests/tiny.py)


@pytest.mark.parametrize("mb,expected", [(None, (2, 4)), ("8", (8, 1)), ("4", (4, 2)), ("1", (1, 8)),
                                         ("auto", (2, 4))])
def test_resolve_micro_batch(mb, expected):
    cfg = tiny_config(**TINY, micro_batch=mb)
    model = Transformer(cfg.model)
    micro, n = resolve_micro_batch(cfg, model, torch.device("cpu"))
    assert (micro, n) == expected
    assert micro * n == cfg.train.batch_size * cfg.train.acc_steps  # tokens per step never change


def test_non_divisor_is_a_user_error():
    with pytest.raises(UserError, match="micro_batch"):
        tiny_config(**TINY, micro_batch="3")


@pytest.mark.parametrize("model", ["base", "llama2"])
def test_same_loss_and_grads_for_every_split(model):
    torch.manual_seed(0)
    cfg = tiny_config(**{**TINY, "model": model, "label_smoothing": 0.1, "loss_chunk": 24,
                        "moe_num_experts": 4 if model == "llama2" else 0})
    net = Transformer(cfg.model)
    head = LossHead(net, cfg.train.label_smoothing, cfg.train.loss_chunk)
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(0, cfg.model.vocab_size, (8, cfg.model.sequence_length + 1), generator=g)
    x, y = seq[:, :-1], seq[:, 1:]
    results = {}
    for n_micro in (1, 2, 8):
        net.zero_grad(set_to_none=True)
        stats = accumulate_gradients(head, x, y, n_micro)
        grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
        results[n_micro] = (stats, grads)
    ref_stats, ref_grads = results[1]
    assert len(ref_grads) == len(list(net.parameters()))
    for n_micro in (2, 8):
        stats, grads = results[n_micro]
        assert stats["n"] == ref_stats["n"] == 8 * cfg.model.sequence_length
        torch.testing.assert_close(stats["ce_sum"], ref_stats["ce_sum"], rtol=1e-5, atol=1e-4)
        assert torch.equal(stats["correct"], ref_stats["correct"])
        if model == "base":  # MoE aux losses are per micro-batch statistics: only dense losses are split-exact
            torch.testing.assert_close(stats["loss"], ref_stats["loss"], rtol=1e-5, atol=1e-6)
            for k in ref_grads:
                torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6, msg=k)
        else:
            torch.testing.assert_close(stats["loss"], ref_stats["loss"], rtol=1e-3, atol=1e-3)
            assert set(stats["aux"]) == set(ref_stats["aux"]) and "moe/load" in stats["aux"]
    assert all(gr.abs().sum() > 0 for k, gr in ref_grads.items() if "router" not in k)
