"""The config tree: generated flags, presets, config files, precedence, validation messages, option metadata, and
the strict type / finiteness / range checks every number from the CLI or a config file gets."""

import argparse
import os
import subprocess
import sys

import pytest

from lmsprint.config import (FLAGS, PRESETS, RESUME_SAFE, RunConfig, SuggestingParser, add_flags, apply_values,
                             build_config, coerce, flags_where, get_value, parse_duration, run_name_parts, set_value,
                             typed)
from lmsprint.errors import ConfigError, UserError, cli_message


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
    assert cfg.eval_cadence == (200, 0.0) and cfg.train.results_base_folder == "./exps"  # eval_freq auto: 200 steps


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
    msg = cli_message(e.value)  # what the CLI prints
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


# ---------------------------------------------------------------------------------------------------- errors


def test_config_errors_name_options_without_cli_wording():
    with pytest.raises(ConfigError) as e:
        build_config({"n_embd": "100", "n_head": "12"})
    assert str(e.value).startswith("n_embd 100 is not divisible by n_head 12")  # from Python: no flags
    assert cli_message(e.value).startswith("--n_embd 100 is not divisible by --n_head 12")


# ---------------------------------------------------------------------------------------------------- metadata
# the hand-kept lists these flags replace (cli/train.py RESUME_SAFE, track/compare.py IGNORED_KEYS,
# track/sweep.py RESERVED), transcribed: the metadata must say exactly the same


def test_resume_safe_flags():
    assert set(flags_where("resume_safe")) == {
        "device", "progress", "data_dir", "data_in_ram", "num_proc", "compile", "compile_mode", "ckpt_interval",
        "save_checkpoint_freq", "save_checkpoint_steps", "wandb", "wandb_project", "wandb_run_prefix",
        "wandb_entity", "tensorboard", "distributed_backend", "results_base_folder", "attn_backend", "quiet",
        "threads", "target"}


def test_bookkeeping_flags():
    assert set(flags_where("bookkeeping")) == {
        "exp_name", "run_prefix", "results_base_folder", "wandb", "wandb_project", "wandb_run_prefix",
        "wandb_entity", "tensorboard", "progress", "data_dir", "num_proc", "log_interval", "ckpt_interval",
        "save_checkpoint_freq", "save_checkpoint_steps", "quiet", "threads", "target"}


def test_sweep_reserved_flags_and_reasons():
    reasons = {k: FLAGS[k][1].metadata["sweep_reserved"] for k in flags_where("sweep_reserved")}
    assert reasons == {"seed": "use --seeds 0,1,2 instead of a seed flag or grid",
                       "exp_name": "the sweep names each run", "run_prefix": "the sweep names each run"}


def test_flags_where_is_in_field_order():
    order = list(FLAGS)
    names = flags_where("resume_safe")
    assert names == sorted(names, key=order.index)
    assert flags_where("no_such_key") == []


@pytest.mark.parametrize("values,parts", [
    ({}, ["base_l12_d768", "s0"]),
    ({"model": "llama2", "n_layer": "4", "n_embd": "128", "n_head": "4", "seed": "7"}, ["llama2_l4_d128", "s7"]),
    ({"moe_num_experts": "1"}, ["base_l12_d768", "s0"]),
    ({"moe_num_experts": "8", "moe_num_experts_per_tok": "2", "label_smoothing": "0.1"},
     ["base_l12_d768", "moe8k2", "s0", "ls0.1"]),
    ({"attention": "local", "attention_window": "64"}, ["base_l12_d768", "local64", "s0"]),
    ({"attention": "global_local", "local_heads": "2"}, ["base_l12_d768", "global_local256", "s0"]),
    ({"opt": "adamw"}, ["base_l12_d768", "s0"]),
    ({"opt": "lion"}, ["base_l12_d768", "lion", "s0"]),
    ({"time_budget": "5m"}, ["base_l12_d768", "tb5m", "s0"]),
    ({"time_budget": "0"}, ["base_l12_d768", "s0"]),
    ({"time_budget": "1h 30m"}, ["base_l12_d768", "tb1h30m", "s0"]),
])
def test_run_name_parts(values, parts):
    assert run_name_parts(build_config(values)) == parts


def test_get_and_set_by_flag_name():
    cfg = build_config({})
    set_value(cfg, "lr", 0.5)
    assert cfg.optim.lr == 0.5 and get_value(cfg, "lr") == 0.5
    apply_values(cfg, {"n_layer": "3"})
    assert cfg.model.n_layer == 3


# ---------------------------------------------------------------------------------------------------- numbers
# issue 10 class 1: every number from the CLI or a config file is checked once, for type, finiteness and range


@pytest.mark.parametrize("values,needle", [
    ({"micro_batch": "\u00b2"}, "--micro_batch \u00b2: must be empty, 'auto' or a positive integer"),
    ({"batch_size": "\u00b2"}, "--batch_size: '\u00b2' is not an integer"),
    ({"n_layer": "\u0661\u0662"}, "is not an integer"),       # Arabic-Indic digits: int() takes them, we do not
    ({"n_layer": "1_000"}, "--n_layer: '1_000' is not an integer"),
    ({"n_layer": "1.55e1"}, "is not an integer"),
    ({"lr": "1_0"}, "--lr: '1_0' is not a number"),
    ({"weight_decay": "inf"}, "--weight_decay inf: must be a finite number"),
    ({"moe_capacity_factor": "inf"}, "--moe_capacity_factor inf: must be a finite number"),
    ({"lr": "nan"}, "--lr nan: must be a finite number"),
    ({"lr": "-inf"}, "--lr -inf: must be a finite number"),
    ({"rope_theta": "1e999"}, "must be a finite number"),
    ({"eval_tokens": "inf"}, "--eval_tokens: 'inf' is not an integer"),
    ({"seed": "99999999999999999999999"}, "--seed 99999999999999999999999: must be at most 9223372036854775807"),
    ({"seed": "-1"}, "--seed -1: must be at least 0"),
    ({"data_seed": str(2**64)}, "--data_seed 18446744073709551616: must be at most 9223372036854775807"),
    ({"vocab_size": "100000000000"}, "--vocab_size 100000000000: must be at most 2147483647"),
    ({"n_layer": "1e999"}, "--n_layer 1.00e+999: must be at most 2147483647"),
    ({"micro_batch": "99999999999"}, "--micro_batch 99999999999: must be empty"),
])
def test_numbers_are_checked_for_type_finiteness_and_range(values, needle):
    with pytest.raises(ConfigError) as e:
        build_config(values)
    msg = cli_message(e.value)
    assert needle in msg and "\n" not in msg


@pytest.mark.parametrize("values", [{"n_layer": "1e2"}, {"n_layer": "1.5e1"}, {"lr": ".5"}, {"lr": "3e-4"},
                                    {"seed": str(2**63 - 1)}, {"micro_batch": "8"}, {"vocab_size": str(2**31 - 1)}])
def test_numbers_that_are_fine(values):
    build_config(values)


@pytest.mark.parametrize("text,needle", [
    ("n_layer: true\n", "--n_layer: 'true' is not an integer"),
    ("lr: false\n", "--lr: 'false' is not a number"),
    ("n_layer: 2.5\n", "--n_layer: '2.5' is not an integer"),
    ("weight_decay: .inf\n", "--weight_decay inf: must be a finite number"),
    ("lr: .nan\n", "--lr nan: must be a finite number"),
    ("vocab_size: 100000000000\n", "--vocab_size 100000000000: must be at most 2147483647"),
    ("exp_name: [a, b]\n", "--exp_name: '['a', 'b']' is not a string"),
])
def test_config_file_numbers_are_checked(tmp_path, text, needle):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        parse(["--config", str(f)])
    assert needle in cli_message(e.value)


def test_config_file_whole_floats_are_integers(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("n_layer: 3.0\n")
    assert parse(["--config", str(f)]).model.n_layer == 3


def test_values_set_from_python_are_checked_too():
    cfg = RunConfig()
    cfg.model.n_layer = True
    with pytest.raises(ConfigError, match="n_layer True: must be an integer"):
        cfg.validate()
    cfg = RunConfig()
    cfg.optim.lr = float("inf")
    with pytest.raises(ConfigError, match="lr inf: must be a finite number"):
        cfg.validate()


def test_micro_batch_is_typed_once_whatever_its_source(tmp_path):
    """The CLI's 'auto' and N, a config file's null / auto / 8, and the '' and '8' older config.yaml files hold all
    become None, 'auto' or an int; a value set from Python is checked by the same rule. An empty value on the
    command line is refused, as for every number."""
    assert [parse(["--micro_batch", v]).train.micro_batch for v in ("auto", "8", " 4 ")] == ["auto", 8, 4]
    with pytest.raises(UserError, match="micro_batch '': is empty"):
        parse(["--micro_batch", ""])
    assert parse([]).train.micro_batch is None
    f = tmp_path / "c.yaml"
    for text, want in (("micro_batch: null\n", None), ("micro_batch: auto\n", "auto"), ("micro_batch: 8\n", 8)):
        f.write_text(text)
        assert parse(["--config", str(f)]).train.micro_batch == want
    cfg = build_config({"micro_batch": 8})
    assert RunConfig.from_dict(cfg.to_dict()).train.micro_batch == 8
    assert coerce("micro_batch", "") is None and coerce("micro_batch", "16") == 16
    for bad in (0, -3, True, 2.5, "x"):
        cfg = RunConfig()
        cfg.train.micro_batch = bad
        with pytest.raises(ConfigError, match="must be empty, 'auto' or a positive integer"):
            cfg.validate()


def test_a_config_of_an_older_version_still_reads():
    """config.yaml / checkpoint configs written before `resume` stopped being an option, with `micro_batch` ''."""
    old = build_config({}).to_dict()
    old["train"] = {**old["train"], "resume": None, "micro_batch": ""}
    cfg = RunConfig.from_dict(old)
    assert cfg.train.micro_batch is None and "resume" not in FLAGS
    assert typed({"micro_batch": "", "lr": "0.5", "gone": 1}) == {"micro_batch": None, "lr": 0.5, "gone": 1}
    with pytest.raises(UserError, match="use --resume"):
        parse(["--init_from", "x"])


def test_resume_safe_is_defined_once():
    import pathlib

    import lmsprint.track.sweep as sweep
    import lmsprint.training.resume as resume
    assert RESUME_SAFE == frozenset(flags_where("resume_safe"))
    assert resume.RESUME_SAFE is RESUME_SAFE
    src = pathlib.Path(resume.__file__).parents[1]
    assert [p.relative_to(src).as_posix() for p in src.rglob("*.py")
            if "\nRESUME_SAFE =" in p.read_text()] == ["config/schema.py"]
    assert sweep.SWEEP_RESUME_SAFE == RESUME_SAFE - {"results_base_folder"}


def test_coerce_refuses_bools_for_numbers():
    with pytest.raises(ConfigError):
        coerce("batch_size", True)
    assert coerce("lr", 1) == 1.0 and coerce("bias", "no") is False


@pytest.mark.slow
@pytest.mark.parametrize("argv,needle", [
    (["--micro_batch", "\u00b2"], "lmsprint: error: --micro_batch \u00b2: must be empty, 'auto' or a positive integer"),
    (["--weight_decay", "inf"], "lmsprint: error: --weight_decay inf: must be a finite number"),
])
def test_cli_refuses_bad_numbers_in_one_line(tmp_path, argv, needle):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    p = subprocess.run([sys.executable, "-m", "lmsprint", "train", *argv, "--results_base_folder",
                        str(tmp_path / "exps")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       encoding="utf-8", timeout=300)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2, p.stderr[-2000:]
    assert lines == [needle], p.stderr[-2000:]
    assert not (tmp_path / "exps").exists()  # refused before any run directory is made


# ---------------------------------------------------------------------------------------------------- strict files
# issue 19.8: a config file never accepts something silently with the last value winning; each refusal is one line
# naming the file and the key


def one_error_line(p, *fragments):
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmsprint: error: "), p.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("text,fragments", [
    ("lr: 0.1\nlr: 0.2\n", ["c.yaml' line 2: key 'lr' is given twice", "first on line 1"]),
    ("optim:\n  lr: 0.1\n  beta1: 0.8\n  lr: 0.2\n", ["c.yaml' line 4: key 'lr' is given twice"]),
    ("bogus_section:\n  lr: 0.5\n", ["c.yaml': unknown section 'bogus_section'", "data, log, model, optim, train"]),
    ("data:\n  lr: 0.5\n", ["c.yaml': key 'data.lr' is under the wrong section: 'lr' belongs under 'optim'"]),
    ("model:\n  moe:\n    attention: local\n", ["'model.moe.attention' is under the wrong section",
                                               "belongs under 'model.attn'"]),
    ("attn:\n  attention: local\n", ["section 'attn' belongs under 'model'"]),
    ("lr: 0.1\nlearning_rate: 0.2\n", ["c.yaml': 'lr' and 'learning_rate' set the same option --lr"]),
    ("lr: 0.1\noptim:\n  lr: 0.2\n", ["'lr' and 'optim.lr' set the same option --lr"]),
    ("resume: exps/run1\n", ["c.yaml': key 'resume': a config file cannot continue a run",
                             "use `lmsprint train --resume exps/run1`"]),
    ("lr:\n  value: 0.1\n", ["option 'lr' holds a mapping"]),
    ("config_format: [demo]\n", ["--config_format '['demo']' is not one of: base, demo, speedrun"]),
    ("n_layer: many\n", ["c.yaml': --n_layer: 'many' is not an integer"]),
])
def test_config_file_refusals_name_the_file_and_key(tmp_path, in_process, text, fragments):
    (tmp_path / "c.yaml").write_text(text)
    one_error_line(in_process("train", "--config", "c.yaml", "--print_config"), *fragments)


def test_yaml_aliases_are_refused_so_billion_laughs_is_one_line(tmp_path, in_process):
    # 1 KB that PyYAML would turn into 9**9 strings the moment anything walks the list (str(), json, comparison)
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    (tmp_path / "laughs.yaml").write_text("\n".join(lines) + "\nexp_name: *i\n")
    assert (tmp_path / "laughs.yaml").stat().st_size < 1024
    one_error_line(in_process("train", "--config", "laughs.yaml", "--print_config"),
                   "laughs.yaml' line 2: YAML aliases (*a) are not accepted in config files")
    # an anchor alone (no alias) is harmless and accepted
    (tmp_path / "anchor.yaml").write_text("lr: &x 0.002\n")
    assert in_process("train", "--config", "anchor.yaml", "--print_config").returncode == 0


def test_toml_refuses_a_flag_with_its_alias(tmp_path, in_process):
    if sys.version_info < (3, 11):
        pytest.skip("TOML config files need Python >= 3.11")
    (tmp_path / "c.toml").write_text("lr = 0.1\n[train]\nmax_iters = 5\niterations = 6\n")
    one_error_line(in_process("train", "--config", "c.toml", "--print_config"),
                   "'train.max_iters' and 'train.iterations' set the same option --iterations")


def test_a_flag_and_its_alias_on_the_command_line(in_process):
    one_error_line(in_process("train", "--lr", "0.1", "--learning_rate", "0.2", "--print_config"),
                   "--lr and --learning_rate are two names of the same flag; give it once")
    one_error_line(in_process("train", "--wandb_log", "--wandb", "false", "--print_config"),
                   "--wandb_log and --wandb are two names of the same flag")
    # one name given twice keeps argparse's rule (the last one), and a name alone works
    p = in_process("train", "--learning_rate", "0.1", "--learning_rate", "0.3", "--print_config")
    assert p.returncode == 0 and "  lr: 0.3\n" in p.stdout


def test_a_runs_saved_config_yaml_loads_with_config(tmp_path, in_process):
    """config.yaml (nested, with `resume: null`) is a valid config file: the README's "load it with --config"."""
    p = in_process("train", "--config_format", "demo", "--lr", "0.004", "--moe_num_experts", "4", "--print_config")
    assert p.returncode == 0, p.stderr
    (tmp_path / "config.yaml").write_text(p.stdout)
    q = in_process("train", "--config", "config.yaml", "--print_config")
    assert q.returncode == 0, q.stderr
    assert q.stdout == p.stdout
