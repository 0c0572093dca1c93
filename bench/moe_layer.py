"""Micro-benchmark of one MoE layer against the dense MLP it replaces (forward + backward).

Times, for the same tokens: the MoE layer (grouped_mm path where supported, and the padded bmm fallback), the
dense MLP of the same kind and hidden size (what one expert is), and a dense MLP with k times that hidden size
(the same active FLOPs as top-k routing). Prints milliseconds per fwd+bwd and the ratios; the MoE/dense-kx ratio
is the routing overhead (1.0 = free dispatch).

    python bench/moe_layer.py                      # CUDA: d=768, 16384 tokens, bf16; CPU: smaller, fp32
    python bench/moe_layer.py --device cpu --tokens 4096 --dim 256
"""

from __future__ import annotations

import argparse

import torch
from torch.utils import benchmark

from lmsprint.config import build_config
from lmsprint.model.mlp import make_dense_mlp
from lmsprint.model.moe import MoE


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto = bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--tokens", type=int, default=0, help="tokens per batch (default: 16384 on CUDA, 2048 on CPU)")
    p.add_argument("--dim", type=int, default=0, help="model width (default: 768 on CUDA, 256 on CPU)")
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--top_k", type=int, default=2)
    p.add_argument("--mlp", default="swiglu", choices=["swiglu", "gelu"])
    p.add_argument("--compile", action="store_true", help="torch.compile every module (fullgraph)")
    p.add_argument("--min_time", type=float, default=2.0, help="seconds of timing per variant")
    return p.parse_args()


def main():
    a = parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, a.dtype) if a.dtype != "auto" else (torch.bfloat16 if cuda else torch.float32)
    tokens = a.tokens or (16384 if cuda else 2048)
    dim = a.dim or (768 if cuda else 256)
    cfg = build_config({"model": "llama2" if a.mlp == "swiglu" else "base", "n_embd": dim,
                        "n_head": max(1, dim // 64), "moe_num_experts": a.experts,
                        "moe_num_experts_per_tok": a.top_k}).model
    hidden = cfg.expert_hidden

    torch.manual_seed(0)
    moe = MoE(cfg).to(device, dtype)
    fallback = MoE(cfg).to(device, dtype)
    fallback.load_state_dict(moe.state_dict())
    fallback.use_grouped = False
    dense = make_dense_mlp(cfg.mlp_kind, dim, hidden, False, 0.0).to(device, dtype)
    dense_k = make_dense_mlp(cfg.mlp_kind, dim, a.top_k * hidden, False, 0.0).to(device, dtype)
    x = torch.randn(tokens, dim, device=device, dtype=dtype, requires_grad=True)
    grouped = moe._grouped_ok(x)

    def step(module):
        y, aux = module(x)
        loss = y.float().square().mean() + (aux["loss"] if aux else 0.0)
        loss.backward()

    variants = {
        f"moe E={a.experts} k={a.top_k} ({'grouped_mm' if grouped else 'bmm'})": moe,
        "moe (padded bmm fallback)": fallback,
        f"dense {cfg.mlp_kind} h={hidden}": dense,
        f"dense {cfg.mlp_kind} h={a.top_k}x{hidden}": dense_k,
    }
    if not grouped:
        del variants["moe (padded bmm fallback)"]
    times = {}
    for name, module in variants.items():
        fn = torch.compile(module, fullgraph=True) if a.compile else module
        for _ in range(3):  # warm-up (and compilation)
            step(fn)
        t = benchmark.Timer("step(fn)", globals={"step": step, "fn": fn}).blocked_autorange(min_run_time=a.min_time)
        times[name] = t.median * 1e3
    print(f"device={device} ({torch.cuda.get_device_name(device) if cuda else 'cpu'}) dtype={dtype} tokens={tokens} "
          f"dim={dim} hidden={hidden} torch={torch.__version__} compile={a.compile} threads={torch.get_num_threads()}")
    for name, ms in times.items():
        print(f"  {name:<40} {ms:9.3f} ms/fwd+bwd")
    names = list(times)
    moe_ms, dense_ms, dense_k_ms = times[names[0]], times[names[-2]], times[names[-1]]
    print(f"  ratio moe / dense      = {moe_ms / dense_ms:.2f}")
    print(f"  ratio moe / dense k x  = {moe_ms / dense_k_ms:.2f}   (routing overhead at equal active FLOPs)")
    if grouped:
        print(f"  ratio bmm fallback / grouped = {times[names[1]] / moe_ms:.2f}")


if __name__ == "__main__":
    main()
