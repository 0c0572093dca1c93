"""lm-evaluation-harness on an exported tiny model, offline, with a local multiple-choice task the test writes;
result files that never overwrite each other."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lmsprint.config import build_config
from lmsprint.data.tokenizer import get_tokenizer
from lmsprint.errors import ConfigError
from lmsprint.evals import lmeval
from lmsprint.evals.lmeval import evaluate_model, list_results, parse_tasks, summary_metrics, write_results
from lmsprint.evals.results import latest_metrics
from lmsprint.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = "lmsprint_tiny_mc"
DOCS = [
    ("The sky is", ["blue", "green", "loud"], 0),
    ("Two and two make", ["four", "seven"], 0),
    ("Fire is", ["cold", "hot"], 1),
    ("Romeo loves", ["Juliet", "Hamlet", "nobody"], 0),
    ("To be or not to", ["be", "sing"], 0),
    ("The cat sat on the", ["dog", "mat"], 1),
]


# ---------------------------------------------------------------------------------------------- result files


def test_result_files_never_overwrite_an_earlier_result(tmp_path):
    run, stamp = str(tmp_path), "20250101-000000"  # one UTC second for all three: the names must still differ
    first = write_results(run, {"results": {"t": {"acc,none": 0.25}}}, {"n": 1}, stamp=stamp)
    second = write_results(run, {"results": {"t": {"acc,none": 0.5}}}, {"n": 2}, stamp=stamp)
    (tmp_path / "evals" / "lm_eval-20250101-000000-3.json").write_text("someone else's")
    third = write_results(run, {"results": {"t": {"acc,none": 0.75, "sample_len": 4}}}, {"n": 3}, stamp=stamp)
    assert [os.path.basename(p) for p in (first, second, third)] == [
        "lm_eval-20250101-000000.json", "lm_eval-20250101-000000-2.json", "lm_eval-20250101-000000-4.json"]
    assert json.loads(open(first).read())["results"]["t"]["acc,none"] == 0.25
    assert json.loads(open(second).read())["lmsprint"] == {"n": 2}
    assert (tmp_path / "evals" / "lm_eval-20250101-000000-3.json").read_text() == "someone else's"
    assert list_results(run) == [first, second, str(tmp_path / "evals" / "lm_eval-20250101-000000-3.json"), third]
    assert sorted(os.listdir(tmp_path / "evals")) == sorted(os.path.basename(p) for p in list_results(run))
    (tmp_path / "evals" / "lm_eval-20250101-000000-3.json").write_text("{not json")
    assert latest_metrics(run) == {"t/acc": 0.75}  # newest readable file wins; a damaged one is skipped


def test_summary_metrics_and_task_parsing():
    res = {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.1,
                                    "acc_norm,none": 0.6, "sample_len": 10}}}
    assert summary_metrics(res) == {"arc_easy/acc": 0.5, "arc_easy/acc_norm": 0.6, "arc_easy/sample_len": 10.0}
    assert parse_tasks("hellaswag, arc_easy,") == ["hellaswag", "arc_easy"]
    with pytest.raises(ConfigError, match="tasks"):
        parse_tasks(" , ")


# ---------------------------------------------------------------------------------------------- real lm-eval


@pytest.fixture
def local_task(tmp_path, monkeypatch):
    """A multiple-choice task YAML over a local JSON-lines file (no network), and its folder."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in DOCS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {tmp_path / 'hf_datasets'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return str(tasks)


def lmsprint_accuracy(model: Transformer, docs) -> float:
    """Accuracy of the multiple-choice task computed with lmsprint itself: argmax of log p(" choice" | question)."""
    tok = get_tokenizer("gpt2")
    right = 0
    for q, choices, answer in docs:
        scores = []
        for c in choices:
            ctx, cont = tok.encode(q), tok.encode(" " + c)
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = model.logits(ids[:, :-1]).log_softmax(-1)[0]
            scores.append(sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)))
        right += int(max(range(len(choices)), key=scores.__getitem__) == answer)
    return right / len(docs)


@pytest.mark.slow
def test_lm_eval_runs_on_a_local_task_and_keeps_every_result(tmp_path, local_task):
    pytest.importorskip("transformers")
    pytest.importorskip("lm_eval")
    cfg = build_config({"model": "llama2", "n_layer": 2, "n_embd": 64, "n_head": 4, "sequence_length": 64}).model
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    run = tmp_path / "run"
    run.mkdir()
    results, table, path = evaluate_model(cfg, model.state_dict(), {"name": "gpt2"}, str(run), TASK,
                                          include_path=local_task, batch_size=4)
    acc = results["results"][TASK]["acc,none"]
    assert acc == pytest.approx(lmsprint_accuracy(model, DOCS))
    assert TASK in table and "acc" in table
    saved = json.loads(open(path).read())
    assert saved["results"][TASK]["acc,none"] == acc and saved["lmsprint"]["tasks"] == [TASK]
    before = open(path).read()

    results2, _, path2 = evaluate_model(cfg, model.state_dict(), {"name": "gpt2"}, str(run), [TASK],
                                        include_path=local_task, limit=2, num_fewshot=1)
    assert path2 != path and open(path).read() == before
    assert results2["results"][TASK]["sample_len"] == 2 and results2["n-shot"][TASK] == 1
    assert list_results(str(run)) == [path, path2]


def test_char_tokenizer_models_are_refused_before_any_work(tmp_path):
    cfg = build_config({"model": "llama2", "n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 81}).model
    with pytest.raises(ConfigError, match="tokenizer` char|tokenizer char"):
        evaluate_model(cfg, {}, get_tokenizer("char"), str(tmp_path), "arc_easy")
    assert not os.listdir(tmp_path)


def test_unknown_task_and_missing_include_path_are_refused(tmp_path, local_task, monkeypatch):
    pytest.importorskip("lm_eval")
    lm_eval, task_manager_cls = lmeval._import_lm_eval()

    def local_only(include_path=None, include_defaults=True):  # indexing lm-eval's own ~10k task files takes a minute
        return task_manager_cls(include_path=include_path, include_defaults=False)

    monkeypatch.setattr(lmeval, "_import_lm_eval", lambda: (lm_eval, local_only))
    with pytest.raises(ConfigError, match="include_path"):
        lmeval.task_manager([TASK], str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="no_such_task_xyz"):
        lmeval.task_manager([TASK, "no_such_task_xyz"], local_task)


@pytest.fixture
def gpt2_run(tmp_path):
    """A run directory holding an untrained tiny llama2 model with the GPT-2 tokenizer (what eval reads)."""
    from lmsprint import rundir
    from lmsprint.training.artifacts import write_run_files, write_weights

    cfg = build_config({"model": "llama2", "n_layer": 1, "n_embd": 32, "n_head": 2, "sequence_length": 32,
                        "results_base_folder": str(tmp_path / "exps")})
    run = rundir.create_run_dir(cfg)
    rundir.write_config(run, cfg)
    write_run_files(run, get_tokenizer("gpt2"))
    torch.manual_seed(0)
    write_weights(run, Transformer(cfg.model), cfg.model, 1)
    return run


@pytest.mark.slow
def test_eval_cli_task_globs_with_include_path_and_a_missing_data_file(gpt2_run, local_task, in_process, tmp_path):
    """`lmsprint eval RUN --tasks 'glob' --include_path DIR` runs every local task the glob matches (lm-eval's loader
    takes names only); a task whose data file is missing is one line naming that file."""
    pytest.importorskip("lm_eval")
    yaml_text = (tmp_path / "tasks" / "tiny_mc.yaml").read_text()
    (tmp_path / "tasks" / "tiny_mc_2.yaml").write_text(yaml_text.replace(f"task: {TASK}", f"task: {TASK}_2"))
    p = in_process("eval", gpt2_run, "--tasks", "lmsprint_tiny_*", "--include_path", local_task, "--device", "cpu",
                   "--limit", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    saved = json.loads(open(list_results(gpt2_run)[-1]).read())
    assert sorted(saved["results"]) == [TASK, f"{TASK}_2"] and saved["lmsprint"]["tasks"] == ["lmsprint_tiny_*"]

    missing = tmp_path / "gone.jsonl"
    (tmp_path / "tasks" / "tiny_mc_2.yaml").write_text(
        yaml_text.replace(f"task: {TASK}", f"task: {TASK}_2").replace(str(tmp_path / "mc.jsonl"), str(missing)))
    p = in_process("eval", gpt2_run, "--tasks", f"{TASK}_2", "--include_path", local_task, "--device", "cpu")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and lines[-1].startswith("lmsprint: error: an lm-eval task's data is missing"), p.stderr
    assert str(missing) in lines[-1] and "disk may be full" not in lines[-1]
    assert "Traceback" not in p.stderr
