"""The Python API (`lmsprint.train`, `lmsprint.load`) and self-contained run directories: a run trained through the
API is loaded, generates and exports from another folder with its data cache gone (real CLI subprocesses, real
transformers, real lm-eval on a local task), and `compare` shows lm-eval results as columns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import lmsprint
from lmsprint.config import build_config
from lmsprint.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(n_layer=1, n_embd=32, n_head=2, sequence_length=32, batch_size=4, time_budget=0, eval_freq=2,
            eval_tokens=256, final_eval="fixed", sample_tokens=4, progress=False, device="cpu")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def lmsprint_cli(*args, cwd, check=True):
    p = subprocess.run([sys.executable, "-m", "lmsprint", *map(str, args)], cwd=cwd, env=_env(),
                       capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A llama2 run on shakespeare-char trained through lmsprint.train, whose data cache is then moved away."""
    root = tmp_path_factory.mktemp("api")
    run = lmsprint.train(dataset="shakespeare-char", data_dir=str(root / "data"), model="llama2", vocab_size=96,
                         iterations=4, results_base_folder=str(root / "exps"), exp_name="char", **TINY)
    shutil.move(str(root / "data"), str(root / "data-moved"))  # eval/generate/export must not need it
    return run, root


def test_train_returns_the_run_and_leaves_a_self_contained_directory(char_run):
    run, _ = char_run
    assert run.summary["status"] == "complete" and run.summary["iterations_done"] == 4
    assert os.path.isdir(run.run_dir) and run.config.model.model == "llama2"
    files = set(os.listdir(run.run_dir))
    assert {"model.safetensors", "tokenizer_info.json", "versions.json", "config.yaml"} <= files
    with open(os.path.join(run.run_dir, "versions.json")) as fh:
        v = json.load(fh)
    assert v["lmsprint"] == lmsprint.__version__ and v["torch"] == torch.__version__
    with open(os.path.join(run.run_dir, "tokenizer_info.json")) as fh:
        tok = json.load(fh)
    assert tok["name"] == "char" and 60 < len(tok["vocab"]) <= 96  # the characters of the text, in id order
    # model.safetensors holds the final weights, equal to the last checkpoint's
    from safetensors.torch import load_file

    ckpt = torch.load(os.path.join(run.run_dir, "checkpoints", "latest.pt"), map_location="cpu", weights_only=False)
    st = load_file(os.path.join(run.run_dir, "model.safetensors"))
    assert ckpt["step"] == 4 and all(torch.equal(st[k], ckpt["model"][k]) for k in st)


def test_load_logits_generate_and_tokenizer(char_run):
    run, _ = char_run
    m = lmsprint.load(run.run_dir)
    assert not m.model.training and m.step == 4 and m.config.model.vocab_size == 96
    ids = m.tokenizer.encode("ROMEO: hi")
    assert m.tokenizer.decode(ids) == "ROMEO: hi" and all(isinstance(i, int) for i in ids)
    x = torch.tensor([ids, ids[::-1]])
    logits = m.logits(x)
    assert logits.shape == (2, len(ids), 96) and logits.dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(logits[:1], m.model.logits(x[:1]).float(), atol=1e-5)  # rows are independent
    a = m.generate("ROMEO:", max_new_tokens=10, seed=1)
    assert a.startswith("ROMEO:") and len(a) == len("ROMEO:") + 10
    assert a == m.generate("ROMEO:", max_new_tokens=10, seed=1)
    assert m.generate("ROMEO:", max_new_tokens=5, temperature=0) == m.generate("ROMEO:", max_new_tokens=5,
                                                                             temperature=0, seed=9)
    with pytest.raises(UserError, match="sequence_length"):
        m.logits(torch.zeros(1, 33, dtype=torch.long))


def test_load_latest_from_another_folder(char_run, tmp_path, monkeypatch):
    run, root = char_run
    monkeypatch.chdir(tmp_path)  # not where the run or its data were
    m = lmsprint.load("latest", results_base_folder=str(root / "exps"))
    assert os.path.samefile(m.run_dir, run.run_dir)
    with pytest.raises(UserError, match="no runs found"):
        lmsprint.load("latest")  # ./exps does not exist here


def test_train_takes_a_config_and_refuses_bad_flags(tmp_path):
    cfg = build_config({"dataset": "shakespeare-char", "data_dir": str(tmp_path / "d"), "vocab_size": 96,
                        "iterations": 1, "results_base_folder": str(tmp_path / "exps"), **TINY})
    run = lmsprint.train(cfg, exp_name="from-config", eval_freq=1)
    assert os.path.basename(run.run_dir) == "from-config" and run.summary["iterations_done"] == 1
    assert cfg.train.exp_name != "from-config"  # the caller's config is not modified
    with pytest.raises(UserError, match="n_layrs|n_layer"):
        lmsprint.train(n_layrs=2)


@pytest.mark.slow
def test_generate_and_export_from_another_folder_without_the_data_cache(char_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    run, _ = char_run
    out = lmsprint_cli("generate", run.run_dir, "--prompt", "ROMEO:", "--max_new_tokens", 10, "--seed", 1,
                       "--device", "cpu", cwd=tmp_path).stdout
    m = lmsprint.load(run.run_dir)
    assert out == m.generate("ROMEO:", max_new_tokens=10, seed=1) + "\n"

    hf_dir = tmp_path / "hf"
    p = lmsprint_cli("export", run.run_dir, hf_dir, cwd=tmp_path)
    assert "LlamaForCausalLM" in p.stdout
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    text = "ROMEO: O, she doth teach the torches to burn bright!"
    ids = tok(text)["input_ids"]
    assert ids == m.tokenizer.encode(text)
    x = torch.tensor([ids[:32]])
    with torch.no_grad():
        diff = (hf(x).logits - m.logits(x)).abs().max().item()
    assert diff < 1e-4, diff
    # an existing, non-empty folder is refused in one line and left as it was
    p = lmsprint_cli("export", run.run_dir, hf_dir, cwd=tmp_path, check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "not empty" in p.stderr
    p = lmsprint_cli("export", run.run_dir, tmp_path / "x", "--checkpoint", "nope.pt", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "latest.pt" in p.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_export_refuses_what_hugging_face_cannot_express_in_one_line(tmp_path):
    run = lmsprint.train(dataset="shakespeare-char", data_dir=str(tmp_path / "d"), vocab_size=96, iterations=1,
                         attention="local", attention_window=8, results_base_folder=str(tmp_path / "exps"),
                         exp_name="local", **{**TINY, "eval_freq": 1})
    p = lmsprint_cli("export", run.run_dir, tmp_path / "out", cwd=tmp_path, check=False)
    assert p.returncode == 2 and p.stderr.startswith("lmsprint: error: --attention local")
    assert p.stderr.count("\n") == 1 and not (tmp_path / "out").exists()
    p = lmsprint_cli("eval", run.run_dir, "--tasks", "arc_easy", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "--attention" in p.stderr and not os.path.exists(os.path.join(run.run_dir, "evals"))


@pytest.mark.slow
def test_lm_eval_through_the_cli_and_compare_columns(shakespeare_manifest, tmp_path):
    pytest.importorskip("lm_eval")
    run = lmsprint.train(dataset=shakespeare_manifest.dir, vocab_size=50304, iterations=1,
                         results_base_folder=str(tmp_path / "exps"), exp_name="gpt2", **{**TINY, "eval_freq": 1})
    data = tmp_path / "mc.jsonl"
    docs = [("The sky is", ["blue", "green"], 0), ("Fire is", ["cold", "hot"], 1), ("Two and two", ["four", "six"], 0)]
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in docs))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {tmp_path / 'hf_datasets'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    p = lmsprint_cli("eval", run.run_dir, "--tasks", "tiny_mc", "--include_path", tasks, "--limit", 2,
                     "--batch_size", 2, "--device", "cpu", cwd=tmp_path)
    assert "tiny_mc" in p.stdout and "acc" in p.stdout
    [path] = [os.path.join(run.run_dir, "evals", f) for f in os.listdir(os.path.join(run.run_dir, "evals"))]
    with open(path) as fh:
        res = json.load(fh)
    acc = res["results"]["tiny_mc"]["acc,none"]
    assert res["results"]["tiny_mc"]["sample_len"] == 2 and res["lmsprint"]["limit"] == 2
    p = lmsprint_cli("compare", run.run_dir, cwd=tmp_path)
    header = next(line for line in p.stdout.splitlines() if "tiny_mc/acc" in line)
    row = next(line for line in p.stdout.splitlines() if line.lstrip().startswith("gpt2"))
    col = [c.strip() for c in header.split("|")].index("tiny_mc/acc") if "|" in header else None
    assert f"{acc:.4f}" in row and (col is None or [c.strip() for c in row.split("|")][col] == f"{acc:.4f}")
