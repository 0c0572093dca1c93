"""Export an lmsprint model to a Hugging Face `transformers` folder (pure functions, no transformers needed).

`export_hf(model_cfg, state_dict, tokenizer_info, out_dir)` writes `config.json`, `generation_config.json`,
`model.safetensors` and the tokenizer files (see hf_tokenizer.py), so that
`AutoModelForCausalLM.from_pretrained(out_dir)` and `AutoTokenizer.from_pretrained(out_dir)` load offline.
The architecture follows the model's parts, not the preset name (`hf_architecture`):

- LayerNorm + GELU MLP + learned positions (`base`) -> `GPT2LMHeadModel`. GPT-2's Conv1D stores (in, out), so
  every linear weight is transposed. lmsprint uses exact (erf) GELU (`F.gelu`), which is HF's `gelu` (not
  GPT-2's tanh `gelu_new`). GPT-2 always has biases: `bias` False exports zeros. LayerNorm eps = `rmsnorm_eps`.
- RMSNorm + SwiGLU + RoPE (`llama2`) -> `LlamaForCausalLM`. lmsprint's RoPE is the rotate-half form with
  `theta ** (-2i/d)` frequencies, which is HF Llama's convention, so q/k weights are copied unpermuted (a
  Meta-layout checkpoint would need the interleave permutation; this one does not). The fused `c_attn` (q|k|v
  rows) is split; `bias` True maps to `attention_bias` and `mlp_bias`.
- the same with MoE in every block, token_choice `topk_softmax` routing -> `MixtralForCausalLM`. Mixtral
  (transformers 4.x and 5.x) takes softmax over all experts, then the top-k, then divides by their sum:
  p_i / sum_topk p_j = exp(l_i) / sum_topk exp(l_j), i.e. exactly softmax over the top-k logits, as lmsprint
  does. Experts are written in the hub layout (`experts.E.w1` gate, `w3` up, `w2` down) that every
  transformers version reads (5.x fuses them into `gate_up_proj` on load); intermediate_size = expert hidden.

Orthogonal QKV exports the materialised (Householder-mapped) projection. An untied head (`tie_embeddings`
false) is written as `lm_head.weight` with `tie_word_embeddings` false. Dropout, query shuffling, router jitter,
the attention backend and `zero_init_proj` (an initialisation) only act in training and are ignored. Everything
else HF cannot express is refused by `check_exportable` with one ConfigError line naming the option: among them
the ReLU² MLP (`mlp` relu2: GPT-2's and Llama's MLPs are GELU and gated SiLU), `qk_norm` (neither normalises
queries and keys) and `logit_softcap` (neither caps its logits).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Mapping

import torch

from ..version import __version__
from ..config import ModelConfig
from ..errors import ConfigError, UserError
from ..model.attention import OrthogonalQKV
from .hf_tokenizer import describe_tokenizer, tokenizer_vocab_size, write_tokenizer
from .safetensors_io import write_safetensors

GPT2, LLAMA, MIXTRAL = "GPT2LMHeadModel", "LlamaForCausalLM", "MixtralForCausalLM"


# ---------------------------------------------------------------------------------------------- checks


def hf_architecture(cfg: ModelConfig) -> str:
    """The HF class the model maps onto, or ConfigError (one line naming the option) if there is none."""
    a, m = cfg.attn, cfg.moe
    if a.attention != "causal":
        raise ConfigError(f"`attention` {a.attention} has no Hugging Face equivalent; export supports causal "
                          "attention only")
    if cfg.mlp_kind == "relu2":
        raise ConfigError("`mlp` relu2 (ReLU squared) has no Hugging Face equivalent; export supports gelu (GPT-2) "
                          "and swiglu (Llama) MLPs")
    if cfg.qk_norm:
        raise ConfigError("`qk_norm` has no Hugging Face equivalent (GPT-2 and Llama do not normalise queries and "
                          "keys); export supports `qk_norm` false")
    if cfg.logit_softcap > 0:
        raise ConfigError(f"`logit_softcap` {cfg.logit_softcap:g} has no Hugging Face equivalent (GPT-2 and Llama "
                          "do not cap their logits); export supports `logit_softcap` 0")
    parts = (cfg.norm_kind, cfg.mlp_kind, cfg.pos_kind)
    if parts == ("layernorm", "gelu", "learned"):
        arch = GPT2
    elif parts == ("rmsnorm", "swiglu", "rope"):
        arch = LLAMA
    else:
        want = {"norm": "layernorm", "mlp": "gelu", "pos": "learned"} if cfg.pos_kind == "learned" else \
            {"norm": "rmsnorm", "mlp": "swiglu", "pos": "rope"}
        for name, kind in (("norm", cfg.norm_kind), ("mlp", cfg.mlp_kind), ("pos", cfg.pos_kind)):
            if kind != want[name]:
                raise ConfigError(f"`{name}` {kind} with `pos` {cfg.pos_kind} has no Hugging Face equivalent; "
                                  "export supports GPT-2 (layernorm, gelu, learned) and Llama (rmsnorm, swiglu, "
                                  "rope) models")
    if m.moe_num_experts <= 1:
        return arch
    if arch == GPT2:
        raise ConfigError("`moe_num_experts` with the GPT-2 parts (`model` base) has no Hugging Face equivalent; "
                          "export supports MoE on `model` llama2 (Mixtral)")
    if m.moe_routing != "token_choice":
        raise ConfigError(f"`moe_routing` {m.moe_routing} has no Hugging Face equivalent; export supports "
                          "token_choice (Mixtral)")
    if m.moe_softmax_order != "topk_softmax":
        raise ConfigError(f"`moe_softmax_order` {m.moe_softmax_order} (no renormalisation) has no Hugging Face "
                          "equivalent; Mixtral renormalises the top-k weights like topk_softmax")
    if m.moe_num_shared_experts:
        raise ConfigError("`moe_num_shared_experts` has no Hugging Face equivalent in Mixtral; export supports "
                          "`moe_num_shared_experts` 0")
    if m.moe_every != 1:
        raise ConfigError(f"`moe_every` {m.moe_every} has no Hugging Face equivalent; Mixtral has MoE in every "
                          "block (`moe_every` 1)")
    if m.moe_capacity_factor > 0:
        raise ConfigError(f"`moe_capacity_factor` {m.moe_capacity_factor} (token dropping) has no Hugging Face "
                          "equivalent; Mixtral is dropless like `moe_capacity_factor` 0")
    if cfg.bias:
        raise ConfigError("`bias` with MoE has no Hugging Face equivalent; Mixtral has no biases")
    return MIXTRAL


check_exportable = hf_architecture


# ---------------------------------------------------------------------------------------------- weights


def _materialise_qkv(cfg: ModelConfig, sd: Mapping[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """The (3C, C) Q/K/V weight of one layer, from an orthogonal parametrization's `original` if needed."""
    if prefix + "weight" in sd:
        return sd[prefix + "weight"]
    orig = sd[prefix + "parametrizations.weight.original"]
    own = {k[len(prefix):]: v.float() for k, v in sd.items()
           if k.startswith(prefix + "parametrizations.weight.")}  # `original` and the map's buffers
    with torch.random.fork_rng(devices=[]):  # building the module draws random weights: keep the caller's RNG
        mod = OrthogonalQKV(cfg.n_embd, cfg.n_head, bias=False)
    mod.load_state_dict(own)
    with torch.no_grad():
        return mod.weight.reshape(3 * cfg.n_embd, cfg.n_embd).to(orig.dtype).clone()


def _clean(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop torch.compile / DDP prefixes; detach and move to CPU."""
    out = {}
    for k, v in sd.items():
        for p in ("_orig_mod.", "module."):
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v.detach().cpu()
    return out


def hf_state_dict(cfg: ModelConfig, state_dict: Mapping[str, torch.Tensor],
                  dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """lmsprint Transformer state_dict -> the HF state_dict of `hf_architecture(cfg)` (contiguous, `dtype`)."""
    arch = hf_architecture(cfg)
    sd = _clean(state_dict)
    C = cfg.n_embd
    out: dict[str, torch.Tensor] = {}

    def opt(key, shape):  # lmsprint's optional biases; HF GPT-2 always has them
        return sd[key] if key in sd else torch.zeros(shape)

    if arch == GPT2:
        out["transformer.wte.weight"] = sd["wte.weight"]
        out["transformer.wpe.weight"] = sd["wpe.weight"]
        for i in range(cfg.n_layer):
            s, t = f"blocks.{i}.", f"transformer.h.{i}."
            for ln in ("ln_1", "ln_2"):
                out[t + ln + ".weight"] = sd[s + ln + ".weight"]
                out[t + ln + ".bias"] = opt(s + ln + ".bias", (C,))
            out[t + "attn.c_attn.weight"] = _materialise_qkv(cfg, sd, s + "attn.c_attn.").t()
            out[t + "attn.c_attn.bias"] = opt(s + "attn.c_attn.bias", (3 * C,))
            for name, rows in (("attn.c_proj", C), ("mlp.c_fc", cfg.mlp_hidden), ("mlp.c_proj", C)):
                out[t + name + ".weight"] = sd[s + name + ".weight"].t()
                out[t + name + ".bias"] = opt(s + name + ".bias", (rows,))
        out["transformer.ln_f.weight"] = sd["ln_f.weight"]
        out["transformer.ln_f.bias"] = opt("ln_f.bias", (C,))
    else:
        out["model.embed_tokens.weight"] = sd["wte.weight"]
        for i in range(cfg.n_layer):
            s, t = f"blocks.{i}.", f"model.layers.{i}."
            out[t + "input_layernorm.weight"] = sd[s + "ln_1.weight"]
            out[t + "post_attention_layernorm.weight"] = sd[s + "ln_2.weight"]
            q, k, v = _materialise_qkv(cfg, sd, s + "attn.c_attn.").split(C, dim=0)
            out.update({t + "self_attn.q_proj.weight": q, t + "self_attn.k_proj.weight": k,
                        t + "self_attn.v_proj.weight": v})
            out[t + "self_attn.o_proj.weight"] = sd[s + "attn.c_proj.weight"]
            if cfg.bias:
                qb, kb, vb = sd[s + "attn.c_attn.bias"].split(C)
                out.update({t + "self_attn.q_proj.bias": qb, t + "self_attn.k_proj.bias": kb,
                            t + "self_attn.v_proj.bias": vb, t + "self_attn.o_proj.bias": sd[s + "attn.c_proj.bias"]})
            if arch == LLAMA:
                for src, dst in (("w1", "gate_proj"), ("w3", "up_proj"), ("c_proj", "down_proj")):
                    out[t + f"mlp.{dst}.weight"] = sd[s + f"mlp.{src}.weight"]
                    if cfg.bias:
                        out[t + f"mlp.{dst}.bias"] = sd[s + f"mlp.{src}.bias"]
            else:
                h = cfg.expert_hidden
                out[t + "block_sparse_moe.gate.weight"] = sd[s + "mlp.router.weight"]
                w_in, w_out = sd[s + "mlp.w_in"], sd[s + "mlp.w_out"]
                for e in range(w_in.shape[0]):
                    u = t + f"block_sparse_moe.experts.{e}."
                    out[u + "w1.weight"], out[u + "w3.weight"] = w_in[e, :h], w_in[e, h:]
                    out[u + "w2.weight"] = w_out[e]
        out["model.norm.weight"] = sd["ln_f.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.to(dtype).contiguous().clone() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------- config


def hf_config(cfg: ModelConfig, special_ids: Mapping[str, object], dtype: torch.dtype = torch.float32) -> dict:
    """The `config.json` of `hf_architecture(cfg)`, in the hub's layout (read by transformers 4.x and 5.x)."""
    arch = hf_architecture(cfg)
    common = {"architectures": [arch], "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
              "torch_dtype": str(dtype).replace("torch.", ""), "use_cache": True, **special_ids,
              "lmsprint_version": __version__}
    if arch == GPT2:
        return {"model_type": "gpt2", **common, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                "n_positions": cfg.sequence_length, "n_ctx": cfg.sequence_length, "n_inner": cfg.mlp_hidden,
                "activation_function": "gelu", "layer_norm_epsilon": cfg.rmsnorm_eps,
                "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, "initializer_range": 0.02}
    llama = {"hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
             "num_key_value_heads": cfg.n_head, "head_dim": cfg.head_dim, "hidden_act": "silu",
             "max_position_embeddings": cfg.sequence_length, "rms_norm_eps": cfg.rmsnorm_eps,
             "rope_theta": cfg.rope_theta, "rope_scaling": None, "attention_dropout": cfg.dropout,
             "initializer_range": 0.02}
    if arch == LLAMA:
        return {"model_type": "llama", **common, **llama, "intermediate_size": cfg.mlp_hidden,
                "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "pretraining_tp": 1}
    m = cfg.moe
    return {"model_type": "mixtral", **common, **llama, "intermediate_size": cfg.expert_hidden,
            "num_local_experts": m.moe_num_experts, "num_experts_per_tok": min(m.moe_num_experts_per_tok,
                                                                                m.moe_num_experts),
            "output_router_logits": False, "router_aux_loss_coef": m.moe_aux_loss_factor,
            "router_jitter_noise": m.moe_router_jitter, "sliding_window": None}


# ---------------------------------------------------------------------------------------------- folder


def check_out_dir(out_dir: str, force: bool = False) -> None:
    """UserError unless `out_dir` is a new or empty folder (with `force`: any folder, not a file or a link)."""
    path = os.path.abspath(out_dir)
    if os.path.islink(out_dir.rstrip(os.sep) or out_dir) or (os.path.exists(path) and not os.path.isdir(path)):
        raise UserError(f"export folder {out_dir} is a file or a symbolic link; choose a new folder")
    if not force and os.path.isdir(path) and os.listdir(path):
        raise UserError(f"export folder {path} already exists and is not empty; choose a new folder, or pass "
                        "--force to replace the export's files in it (its other files stay)")


def export_hf(model_cfg: ModelConfig, state_dict: Mapping[str, torch.Tensor], tokenizer_info, out_dir: str,
              dtype: torch.dtype = torch.float32, force: bool = False) -> str:
    """Write a Hugging Face folder for the model at `out_dir` (which must not exist or be empty, unless `force`:
    then the export's files replace those of the same names and other files stay); returns the architecture
    name. The files are assembled next to out_dir and renamed into place, so a failed export leaves nothing
    half-written. Raises ConfigError for what HF cannot express."""
    arch = hf_architecture(model_cfg)
    tok = describe_tokenizer(tokenizer_info)
    n_tok = tokenizer_vocab_size(tok)
    if n_tok > model_cfg.vocab_size:
        raise ConfigError(f"`vocab_size` {model_cfg.vocab_size} is smaller than the {tok['name']} tokenizer's "
                          f"{n_tok} tokens; the model cannot be exported with it")
    check_out_dir(out_dir, force)
    out_dir = os.path.abspath(out_dir)
    tensors = hf_state_dict(model_cfg, state_dict, dtype)
    # --force into an existing folder: assembled inside it (its parent may not be writable), then moved up
    parent = out_dir if force and os.path.isdir(out_dir) else os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", dir=parent)
    try:
        special = write_tokenizer(tok, tmp, model_cfg.sequence_length)
        write_safetensors(tensors, os.path.join(tmp, "model.safetensors"), {"format": "pt"},
                          name=os.path.join(out_dir, "model.safetensors"))
        with open(os.path.join(tmp, "config.json"), "w") as fh:
            json.dump(hf_config(model_cfg, special, dtype), fh, indent=2)
        gen = {k: v for k, v in special.items() if v is not None}
        with open(os.path.join(tmp, "generation_config.json"), "w") as fh:
            json.dump({"_from_model_config": True, **gen}, fh, indent=2)
        if os.path.isdir(out_dir) and os.listdir(out_dir):  # --force: each file replaces its namesake
            names = sorted(os.listdir(tmp))
            clash = [n for n in names if os.path.isdir(os.path.join(out_dir, n))
                     and not os.path.islink(os.path.join(out_dir, n))]
            if clash:
                raise UserError(f"export folder {out_dir} holds a folder named {clash[0]}, a file of the export; "
                                "move it away or choose a new folder")
            for name in names:  # os.replace replaces a link itself, never what it points to
                os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
        else:
            if os.path.isdir(out_dir):
                os.rmdir(out_dir)  # empty (checked above)
            os.rename(tmp, out_dir)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return arch


__all__ = ["export_hf", "hf_architecture", "check_exportable", "hf_state_dict", "hf_config",
           "GPT2", "LLAMA", "MIXTRAL"]
