"""The config tree: generated flags, presets, config files, precedence, validation messages."""

import argparse

import pytest

from lmsprint.config import (FLAGS, PRESETS, RunConfig, SuggestingParser, add_flags, build_config, parse_duration)
from lmsprint.errors import UserError


def parse(argv):
    p = SuggestingParser(prog="t")
    p.add_argument("--config")
    add_flags(p)
    ns = vars(p.parse_args(argv))
    cfg_file = ns.pop("config", None)
    return build_config(ns, cfg_file)


SEED_CMD = ("--config_format base --model llama2 --moe_num_experts 4 --moe_num_experts_per_tok 2 --iterations 11000 "
            "--label_smoothing 0.1 --wandb --wandb_project llm-hack").split()


def test_seed_command_parses_with_llm_baselines_defaults():
    cfg = parse(SEED_CMD)
    assert cfg.model.model == "llama2" and cfg.model.moe.moe_num_experts == 4
    assert cfg.model.moe.moe_num_experts_per_tok == 2 and cfg.train.iterations == 11000
    assert cfg.train.label_smoothing == 0.1 and cfg.log.wandb is True and cfg.log.wandb_project == "llm-hack"
    # hackathon defaults
    assert (cfg.train.batch_size, cfg.train.acc_steps, cfg.model.sequence_length) == (32, 4, 512)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.beta2, cfg.optim.warmup_percent) == (1e-3, 0.1, 0.95, 0.05)
    assert cfg.data.dataset == "slimpajama" and cfg.model.vocab_size == 50304 and cfg.data.data_seed == 1337
    assert cfg.train.eval_freq == 200 and cfg.train.results_base_folder == "./exps"


def test_every_llm_baselines_flag_exists():
    names = ("config_format batch_size acc_steps seed data_seed device iterations lr warmup_percent weight_decay beta1 "
             "beta2 scheduler opt eval_freq results_base_folder grad_clip dataset vocab_size data_in_ram model dropout "
             "n_head n_layer n_embd sequence_length dtype bias compile rmsnorm_eps multiple_of run_prefix exp_name "
             "eval_seq_prefix distributed_backend save_checkpoint_freq moe_num_experts moe_num_experts_per_tok "
             "label_smoothing wandb wandb_project time_budget").split()
    missing = [n for n in names if n not in FLAGS]
    assert not missing


@pytest.mark.parametrize("text,value", [("--bias", True), ("--bias true", True), ("--bias false", False),
                                         ("--bias 0", False), ("--compile", True), ("--data_in_ram yes", True)])
def test_booleans_actually_parse(text, value):
    name = text.split()[0][2:]
    cfg = parse(text.split())
    section = {"bias": cfg.model, "compile": cfg.train, "data_in_ram": cfg.data}[name]
    assert getattr(section, name) is value


def test_precedence_defaults_preset_file_cli(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("config_format: demo\nmodel:\n  n_layer: 3\nlr: 0.01\n")
    cfg = parse(["--config", str(f), "--lr", "0.02"])
    assert cfg.model.n_layer == 3  # file over preset
    assert cfg.optim.lr == 0.02  # cli over file
    assert cfg.model.n_embd == PRESETS["demo"]["n_embd"]  # preset over default
    assert cfg.optim.beta1 == 0.9  # default


def test_toml_config(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[model]\nmodel = "llama2"\n[train]\nbatch_size = 8\n')
    cfg = parse(["--config", str(f)])
    assert cfg.model.model == "llama2" and cfg.train.batch_size == 8


def test_round_trip_dict():
    cfg = parse(SEED_CMD)
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize("argv,needle", [
    (["--n_embd", "100", "--n_head", "12"], "not divisible by --n_head"),
    (["--sequence_length", "0"], "--sequence_length"),
    (["--model", "gpt5"], "--model 'gpt5' is not one of: base, llama2"),
    (["--time_budget", "3 fortnights"], "cannot parse"),
    (["--lrr", "0.1"], "did you mean --lr"),
    (["--moe_num_experts", "2", "--moe_num_experts_per_tok", "3"], "exceeds"),
    (["--batch_size", "many"], "is not an integer"),
    (["--attention_pattern", "SXL", "--attention", "global_local"], "only S"),
])
def test_bad_input_is_one_line(argv, needle):
    with pytest.raises(UserError) as e:
        parse(argv)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        parse(["--config", str(tmp_path / "nope.yaml")])


def test_unknown_key_in_config_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("n_layers: 3\n")
    with pytest.raises(UserError, match="did you mean --n_layer"):
        parse(["--config", str(f)])


@pytest.mark.parametrize("text,secs", [("90s", 90), ("5m", 300), ("3h", 10800), ("1h30m", 5400), ("600", 600),
                                       ("0.5h", 1800), (None, None)])
def test_parse_duration(text, secs):
    assert parse_duration(text) == secs


@pytest.mark.parametrize("text", ["abc", "5x", "-3m", "m5", "1h 2q"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_presets_choose_model_parts():
    base, llama = parse(["--model", "base"]).model, parse(["--model", "llama2"]).model
    assert (base.norm_kind, base.mlp_kind, base.pos_kind) == ("layernorm", "gelu", "learned")
    assert (llama.norm_kind, llama.mlp_kind, llama.pos_kind) == ("rmsnorm", "swiglu", "rope")
    assert llama.mlp_hidden == 2048 and base.mlp_hidden == 3072
    mixed = parse(["--model", "llama2", "--norm", "layernorm"]).model
    assert mixed.norm_kind == "layernorm" and mixed.mlp_kind == "swiglu"


def test_help_lists_every_flag():
    p = argparse.ArgumentParser()
    add_flags(p)
    text = p.format_help()
    for name, (path, f, tp) in FLAGS.items():
        if f.metadata.get("cli", True):
            assert f"--{name}" in text
