"""Export to Hugging Face (logits equal to lmsprint's, tokenizer ids equal, generate, one-line refusals) and the
safetensors weights io."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lmsprint.config import build_config
from lmsprint.data.sources import shakespeare_documents
from lmsprint.data.tokenizer import get_tokenizer, gpt2_files
from lmsprint.errors import ConfigError, UserError, cli_message
from lmsprint.export import (describe_tokenizer, export_hf, hf_architecture, load_weights, model_config_of,
                             save_weights)
from lmsprint.export.hf_tokenizer import gpt2_vocab_merges, ranks_to_vocab_merges
from lmsprint.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"n_layer": 2, "n_embd": 64, "n_head": 4, "sequence_length": 32}


def model_cfg(**kw):
    return build_config({**TINY, **kw}).model


def tiny_model(cfg, seed=0) -> Transformer:
    """A random tiny model whose norms and biases are perturbed too, so a wrong mapping of them shows."""
    torch.manual_seed(seed)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_f"):
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith("router.weight"):  # spread the router so that the top-k really differs by token
                p.mul_(20)
    return m


def char_tok():
    return get_tokenizer("char")


def shakespeare_text(n_chars: int) -> str:
    return "".join(shakespeare_documents())[:n_chars]


# ---------------------------------------------------------------------------------------------- tokenizer


def test_ranks_to_vocab_merges_small():
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"ab": 256, b"abc": 257, b" a": 258, b" abc": 259})
    vocab, merges = ranks_to_vocab_merges(ranks)
    assert merges == [("a", "b"), ("ab", "c"), ("Ġ", "a"), ("Ġ", "abc")]  # Ġ: GPT-2's printable b" "
    assert vocab["Ġabc"] == 259 and vocab["!"] == ord("!")


def test_gpt2_conversion_reproduces_the_shipped_gpt2_files():
    vocab, merges = gpt2_vocab_merges()
    files = gpt2_files()
    with open(files["encoder.json"], encoding="utf-8") as fh:
        assert vocab == json.load(fh)
    with open(files["vocab.bpe"], encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    assert list(merges) == [tuple(line.split(" ")) for line in lines[1:] if line]


# ---------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("flags,flag", [
    ({"attention": "local", "attention_window": 8}, "attention"),
    ({"attention": "global_local", "local_heads": 2}, "attention"),
    ({"model": "llama2", "moe_num_experts": 4, "moe_routing": "expert_choice"}, "moe_routing"),
    ({"model": "llama2", "moe_num_experts": 4, "moe_num_shared_experts": 1}, "moe_num_shared_experts"),
    ({"model": "llama2", "moe_num_experts": 4, "moe_softmax_order": "softmax_topk"}, "moe_softmax_order"),
    ({"model": "llama2", "moe_num_experts": 4, "moe_every": 2}, "moe_every"),
    ({"model": "llama2", "moe_num_experts": 4, "moe_capacity_factor": 1.25}, "moe_capacity_factor"),
    ({"model": "llama2", "moe_num_experts": 4, "bias": True}, "bias"),
    ({"moe_num_experts": 4}, "moe_num_experts"),
    ({"model": "llama2", "mlp": "gelu"}, "mlp"),
    ({"pos": "rope"}, "norm"),
    ({"norm": "rmsnorm"}, "norm"),
    ({"model": "llama2", "mlp": "relu2"}, "mlp"),
    ({"mlp": "relu2"}, "mlp"),
    ({"model": "llama2", "qk_norm": True}, "qk_norm"),
    ({"qk_norm": True}, "qk_norm"),
    ({"model": "llama2", "logit_softcap": 30.0}, "logit_softcap"),
    ({"config_format": "speedrun"}, "mlp"),
])
def test_unexportable_models_are_refused_in_one_line_naming_the_flag(flags, flag, tmp_path):
    cfg = model_cfg(**flags)
    with pytest.raises(ConfigError) as e:
        hf_architecture(cfg)
    msg = cli_message(e.value)
    assert "\n" not in msg and f"--{flag}" in msg and "Hugging Face" in msg
    with pytest.raises(ConfigError):  # export refuses before writing anything
        export_hf(cfg, {}, char_tok(), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_training_only_options_do_not_block_export():
    cfg = model_cfg(model="llama2", dropout=0.1, shuffle_query_frac=0.5, moe_num_experts=4, moe_router_jitter=0.1,
                    moe_expert_hidden=96)
    assert hf_architecture(cfg) == "MixtralForCausalLM"
    assert hf_architecture(model_cfg(model="llama2", zero_init_proj=True)) == "LlamaForCausalLM"  # an init only
    # the speedrun preset with the one part HF lacks put back: its untied head exports
    assert hf_architecture(model_cfg(config_format="speedrun", mlp="swiglu")) == "LlamaForCausalLM"


def test_export_refuses_a_non_empty_folder_and_a_too_small_vocab(tmp_path):
    cfg = model_cfg(vocab_size=char_tok().n_vocab)
    sd = tiny_model(cfg).state_dict()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("user file")
    with pytest.raises(UserError, match="not empty"):
        export_hf(cfg, sd, char_tok(), str(tmp_path / "out"))
    assert (tmp_path / "out" / "mine.txt").read_text() == "user file"
    with pytest.raises(ConfigError, match="vocab_size"):
        export_hf(cfg, sd, {"name": "gpt2"}, str(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary folder left behind


# ---------------------------------------------------------------------------------------------- HF parity

CASES = {
    "base": ({"vocab_size": 50304}, "gpt2", "GPT2LMHeadModel"),
    "base-bias-untied": ({"bias": True, "tie_embeddings": False, "rmsnorm_eps": 1e-6}, "char", "GPT2LMHeadModel"),
    "llama2": ({"model": "llama2", "rope_theta": 500.0}, "char", "LlamaForCausalLM"),
    "llama2-orthogonal-bias-untied": ({"model": "llama2", "orthogonal_qkv": True, "bias": True,
                                       "tie_embeddings": False, "multiple_of": 32}, "char", "LlamaForCausalLM"),
    "base-orthogonal": ({"orthogonal_qkv": True}, "char", "GPT2LMHeadModel"),
    "llama2-untied": ({"model": "llama2", "tie_embeddings": False}, "char", "LlamaForCausalLM"),
    "llama2-moe": ({"model": "llama2", "moe_num_experts": 4, "moe_num_experts_per_tok": 2, "moe_expert_hidden": 48},
                   "char", "MixtralForCausalLM"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (lmsprint model, HF folder); exported lazily, once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            flags, tok, _ = CASES[name]
            flags = {"vocab_size": char_tok().n_vocab, **flags} if tok == "char" else flags
            cfg = model_cfg(**flags)
            m = tiny_model(cfg)
            out = str(tmp_path_factory.mktemp("hf") / name)
            export_hf(cfg, m.state_dict(), char_tok() if tok == "char" else {"name": "gpt2"}, out)
            cache[name] = (m, out)
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_exported_logits_equal_lmsprint(name, exported):
    transformers = pytest.importorskip("transformers")
    m, out = exported(name)
    assert sorted(os.listdir(out)) == sorted(["config.json", "generation_config.json", "model.safetensors",
                                              "tokenizer.json", "tokenizer_config.json"]
                                             + (["merges.txt", "special_tokens_map.json", "vocab.json"]
                                                if CASES[name][1] == "gpt2" else []))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == CASES[name][2]
    g = torch.Generator().manual_seed(1)
    n_tok = 50257 if CASES[name][1] == "gpt2" else m.cfg.vocab_size
    idx = torch.randint(0, n_tok, (2, m.cfg.sequence_length), generator=g)
    with torch.no_grad():
        ref, got = m.logits(idx), hf(idx).logits
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-4
    assert ref.std() > 0.01  # a real comparison, not of two constants


def test_mixtral_router_matches_topk_softmax(exported):
    """Mixtral's softmax -> top-k -> renormalise gives lmsprint's softmax over the top-k logits, per token."""
    transformers = pytest.importorskip("transformers")
    m, out = exported("llama2-moe")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    x = torch.randn(40, m.cfg.n_embd)
    moe = m.blocks[0].mlp
    w_ref, idx_ref, _ = moe.route(moe.router_logits(x))
    layer = hf.model.layers[0]
    gate = (layer.mlp if hasattr(layer, "mlp") else layer.block_sparse_moe).gate
    routed = gate(x)
    if isinstance(routed, tuple):  # transformers 5: the router module routes (softmax, top-k, renormalise)
        _, w_hf, idx_hf = routed
    else:  # transformers 4: a linear gate; the block does what the router module does in 5
        w_hf, idx_hf = routed.float().softmax(-1).topk(moe.top_k, dim=-1)
        w_hf = w_hf / w_hf.sum(-1, keepdim=True)
    assert torch.equal(idx_ref, idx_hf)
    assert torch.allclose(w_ref, w_hf, atol=1e-6)
    assert len(set(idx_ref[:, 0].tolist())) > 1  # the tokens really are routed to different experts


def test_tokenizer_ids_equal_lmsprint_on_real_text(exported):
    transformers = pytest.importorskip("transformers")
    text = shakespeare_text(40_000)
    _, out = exported("base")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ours = get_tokenizer("gpt2")
    ids = tok(text)["input_ids"]
    assert ids == ours.encode(text)
    assert tok.decode(ids) == text
    assert tok.eos_token_id == ours.eot == 50256 and len(tok) == ours.n_vocab
    _, out = exported("llama2")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok(text)["input_ids"]
    assert ids == char_tok().encode(text) and tok.decode(ids) == text


@pytest.mark.parametrize("name", ["base", "llama2-moe"])
def test_hf_generate_runs_and_matches_lmsprint_greedy(name, exported):
    transformers = pytest.importorskip("transformers")
    m, out = exported(name)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    prompt = tok("ROMEO:", return_tensors="pt")
    gen = hf.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    ids = prompt["input_ids"]
    with torch.no_grad():
        for _ in range(8):
            ids = torch.cat([ids, m.logits(ids)[:, -1:].argmax(-1)], dim=1)
    assert gen.tolist() == ids.tolist()
    assert isinstance(tok.decode(gen[0]), str)


# ---------------------------------------------------------------------------------------------- safetensors


def test_safetensors_weights_round_trip_without_pickle(tmp_path):
    cfg = model_cfg(model="llama2", vocab_size=80, orthogonal_qkv=True, tie_embeddings=False)
    m = tiny_model(cfg)
    path = str(tmp_path / "model.safetensors")
    save_weights(path, m.state_dict(), cfg, extra={"step": "7"})
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))  # plain JSON header + raw tensor bytes: no pickle anywhere
    assert header["__metadata__"]["step"] == "7" and header["__metadata__"]["format"] == "pt"
    sd, meta = load_weights(path)
    cfg2 = model_config_of(meta)
    assert cfg2 == cfg
    m2 = Transformer(cfg2).eval()
    m2.load_state_dict(sd)
    idx = torch.randint(0, 80, (2, 16))
    with torch.no_grad():
        assert torch.equal(m.logits(idx), m2.logits(idx))
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temporary file left


def test_safetensors_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    w = torch.randn(10, 4)
    sd = {"wte.weight": w, "lm_head.weight": w, "part": w[:2], "other": torch.ones(3)}
    path = str(tmp_path / "w.safetensors")
    save_weights(path, sd)
    with open(path, "rb") as fh:
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    assert "lm_head.weight" not in header and "wte.weight" in header
    got, meta = load_weights(path)
    assert got.keys() == sd.keys()
    assert got["lm_head.weight"] is got["wte.weight"]
    assert all(torch.equal(got[k], v) for k, v in sd.items())


def test_load_weights_errors(tmp_path):
    from lmsprint.errors import CheckpointError

    with pytest.raises(CheckpointError, match="missing"):
        load_weights(str(tmp_path / "none.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_weights(str(bad))
    save_weights(str(tmp_path / "noconf.safetensors"), {"a": torch.ones(1)})
    with pytest.raises(CheckpointError, match="model config"):
        model_config_of(load_weights(str(tmp_path / "noconf.safetensors"))[1])


def test_untied_llama2_exports_its_own_head(exported):
    transformers = pytest.importorskip("transformers")
    m, out = exported("llama2-untied")
    with open(os.path.join(out, "config.json")) as fh:
        assert json.load(fh)["tie_word_embeddings"] is False
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    head, emb = hf.get_output_embeddings().weight, hf.get_input_embeddings().weight
    assert head.data_ptr() != emb.data_ptr() and not torch.equal(head, emb)
    assert torch.equal(head, m.lm_head.weight) and torch.equal(emb, m.wte.weight)


def test_hugging_face_tokenizer_is_carried_into_the_export(tmp_path):
    """A run trained with `--tokenizer path/to/tokenizer.json` keeps that file's JSON (describe_tokenizer); export
    writes it as tokenizer.json, and AutoTokenizer gives lmsprint's ids and its separator as eos."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    tk = tokenizers.Tokenizer(tokenizers.models.BPE())
    tk.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    text = shakespeare_text(20_000)
    tk.train_from_iterator([text], trainer)
    path = tmp_path / "tok" / "tokenizer.json"
    path.parent.mkdir()
    tk.save(str(path))
    ours = get_tokenizer(str(path))
    info = describe_tokenizer(ours)
    assert info["name"] == ours.name and json.loads(info["vocab"])["model"]["type"] == "BPE"
    path.unlink()  # the run directory's description alone rebuilds it
    cfg = model_cfg(model="llama2", vocab_size=320)
    out = str(tmp_path / "hf")
    export_hf(cfg, tiny_model(cfg).state_dict(), info, out)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok(text[:3000])["input_ids"]
    assert ids == ours.encode(text[:3000]) and tok.decode(ids) == text[:3000]
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == ours.eot
