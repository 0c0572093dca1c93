"""New inputs for `--dataset` / `--tokenizer`: nanoGPT folders (read in place), `datasets` save_to_disk folders,
Hugging Face tokenizer files, and every hub source's streaming path, run offline against local folders laid out like
the hub repositories (read through `LMSPRINT_HUB_MIRROR`, the same `load_dataset(repo, config, streaming=True)`)."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lmsprint.config import DataConfig
from lmsprint.data.loader import open_tokens
from lmsprint.data.manifest import check_vocab, load_manifest
from lmsprint.data.prepare import prepare
from lmsprint.data.readers import MIRROR_ENV, text_docs
from lmsprint.data.sources import HUB, resolve_source, shakespeare_documents
from lmsprint.data.tokenizer import get_tokenizer
from lmsprint.errors import ConfigError, DataError, UserError, cli_message

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
tokenizers = pytest.importorskip("tokenizers")

DOCS = [d[:600] for d in shakespeare_documents()[:60]]


def snapshot(root):
    """Every file under root with its bytes' sha256 and mtime: equal snapshots mean nothing was touched."""
    out = {}
    for d, _s, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = (hashlib.sha256(fh.read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def lmsprint(*args, cwd, env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "lmsprint", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def one_line_error(r):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("lmsprint: error: "), r.stderr
    assert "delete" not in lines[0].lower()
    return lines[0]


# ------------------------------------------------------------------------------------------------ nanoGPT


@pytest.fixture(scope="module")
def nanogpt_dir(shakespeare_manifest, tmp_path_factory):
    """A nanoGPT-style folder (train.bin / val.bin of uint16 GPT-2 ids, no manifest) cut from the Shakespeare data."""
    root = tmp_path_factory.mktemp("nanogpt") / "shakespeare"
    root.mkdir()
    m = shakespeare_manifest
    train, val = open_tokens(m.train_path, m.dtype), open_tokens(m.val_path, m.dtype)
    np.asarray(train[:40_000], dtype=np.uint16).tofile(root / "train.bin")
    np.asarray(val[:6_000], dtype=np.uint16).tofile(root / "val.bin")
    (root / "readme.txt").write_text("made by nanoGPT's prepare.py\n")
    return root


def test_nanogpt_folder_is_used_in_place(nanogpt_dir, tmp_path):
    before = snapshot(nanogpt_dir)
    tok = get_tokenizer("gpt2")
    m = prepare(DataConfig(dataset=str(nanogpt_dir), data_dir=str(tmp_path / "cache")), progress=False)
    assert m.train_path == str(nanogpt_dir / "train.bin") and m.val_path == str(nanogpt_dir / "val.bin")
    assert os.path.dirname(m.dir) == str(tmp_path / "cache") and os.listdir(m.dir) == ["manifest.json"] or \
        sorted(os.listdir(m.dir)) == [".lock", "manifest.json"]
    assert (m.tokenizer, m.dtype, m.n_vocab, m.eot) == ("gpt2", "uint16", 50257, 50256)
    assert (m.train_tokens, m.val_tokens) == (40_000, 6_000)
    for split, path in (("train", m.train_path), ("val", m.val_path)):
        ids = np.fromfile(path, dtype=np.uint16)
        with open(path, "rb") as fh:
            assert m.sha256[split] == hashlib.sha256(fh.read()).hexdigest()
        assert getattr(m, f"{split}_bytes") == int(tok.token_bytes()[ids].sum())
        assert getattr(m, f"{split}_docs") == int((ids == tok.eot).sum())
    # the manifest in the cache is found again and reads the user's files by absolute path
    assert load_manifest(m.dir) == m
    assert prepare(DataConfig(dataset=str(nanogpt_dir), data_dir=str(tmp_path / "cache")), progress=False) == m
    assert snapshot(nanogpt_dir) == before


@pytest.mark.slow
def test_nanogpt_folder_through_the_cli(nanogpt_dir, tmp_path):
    before = snapshot(nanogpt_dir)
    r = lmsprint("prepare", "--dataset", nanogpt_dir, "--data_dir", tmp_path / "cache", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "40,000 tokens" in r.stdout and "6,000 tokens" in r.stdout and "read in place" in r.stdout
    r = lmsprint("train", "--dataset", nanogpt_dir, "--data_dir", tmp_path / "cache", "--results_base_folder",
                 tmp_path / "exps", "--n_layer", 1, "--n_embd", 16, "--n_head", 2, "--sequence_length", 16,
                 "--batch_size", 2, "--acc_steps", 1, "--iterations", 2, "--eval_freq", 100, "--eval_tokens", 64,
                 "--final_eval", "fixed", "--sample_tokens", 0, "--time_budget", 0, "--progress", "false",
                 "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert snapshot(nanogpt_dir) == before


def test_nanogpt_folder_errors(nanogpt_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    np.array([1, 2, 60000], dtype=np.uint16).tofile(bad / "train.bin")
    np.array([1, 2], dtype=np.uint16).tofile(bad / "val.bin")
    with pytest.raises(DataError, match="token id 60000, outside GPT-2's 50257 ids"):
        prepare(DataConfig(dataset=str(bad), data_dir=str(tmp_path / "c")), progress=False)
    os.remove(bad / "val.bin")
    with pytest.raises(DataError, match="has no val.bin"):
        resolve_source(DataConfig(dataset=str(bad)))
    with pytest.raises(ConfigError, match="holds GPT-2 ids; drop tokenizer"):
        resolve_source(DataConfig(dataset=str(nanogpt_dir), tokenizer="char"))
    with pytest.raises(ConfigError, match="max_docs does not apply"):
        resolve_source(DataConfig(dataset=str(nanogpt_dir), max_docs=3))
    char_dir = tmp_path / "char"
    char_dir.mkdir()
    for f in ("train.bin", "val.bin", "meta.pkl"):
        (char_dir / f).write_bytes(b"\0\0")
    before = snapshot(tmp_path)
    r = lmsprint("prepare", "--dataset", char_dir, "--data_dir", tmp_path / "c2", cwd=tmp_path)
    assert "nanoGPT character ids (meta.pkl)" in one_line_error(r)
    r = lmsprint("prepare", "--dataset", bad, "--data_dir", tmp_path / "c2", cwd=tmp_path)
    assert "has no val.bin" in one_line_error(r)
    assert snapshot(tmp_path) == before


def test_no_message_suggests_deleting(shakespeare_manifest, tmp_path):
    import shutil

    d = tmp_path / "prepared"
    shutil.copytree(shakespeare_manifest.dir, d)
    os.remove(d / "val.bin")
    for call in (lambda: load_manifest(str(d)), lambda: open_tokens(str(d / "val.bin"), "uint16")):
        with pytest.raises(UserError) as e:
            call()
        assert "delete" not in cli_message(e.value).lower() and "--data_dir" in cli_message(e.value)


# ------------------------------------------------------------------------------------------------ save_to_disk


def test_save_to_disk_dataset_dict_uses_its_splits(tmp_path):
    path = tmp_path / "dd"
    train, val = DOCS[:48], DOCS[48:]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": train, "n": list(range(48))}),
                          "validation": datasets.Dataset.from_dict({"content": val, "n": list(range(12))}),
                          "test": datasets.Dataset.from_dict({"content": ["never read"], "n": [0]})}
                         ).save_to_disk(str(path))
    before = snapshot(path)
    with pytest.raises(DataError, match="no 'text' field \\(fields: content, n\\).*text_field") as e:
        prepare(DataConfig(dataset=str(path), data_dir=str(tmp_path / "c")), progress=False)
    assert "--text_field" in cli_message(e.value)
    m = prepare(DataConfig(dataset=str(path), data_dir=str(tmp_path / "c"), text_field="content"), progress=False)
    assert (m.train_docs, m.val_docs) == (48, 12) and "train and validation splits" in m.source
    tok = get_tokenizer(m)
    expect = {s: np.array([i for d in docs for i in tok.encode(d) + [tok.eot]], dtype=np.uint16)
              for s, docs in (("train", train), ("val", val))}
    assert np.array_equal(open_tokens(m.val_path, m.dtype), expect["val"])
    assert np.array_equal(open_tokens(m.train_path, m.dtype), expect["train"])
    # max_docs keeps both splits (they are interleaved evenly)
    m = prepare(DataConfig(dataset=str(path), data_dir=str(tmp_path / "c"), text_field="content", max_docs=20),
                progress=False)
    assert (m.train_docs, m.val_docs) == (16, 4)
    with pytest.raises(ConfigError, match="own validation split"):
        resolve_source(DataConfig(dataset=str(path), text_field="content", val_fraction=0.1))
    assert snapshot(path) == before


def test_save_to_disk_dataset_is_split_by_prepare(tmp_path):
    path = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(path))
    before = snapshot(path)
    r = lmsprint("prepare", "--dataset", path, "--data_dir", tmp_path / "c", "--val_fraction", 0.1, "--quiet",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = load_manifest(os.path.join(tmp_path / "c", next(iter(os.listdir(tmp_path / "c")))))
    assert m.train_docs + m.val_docs == len(DOCS) and 3 <= m.val_docs <= 12  # about val_fraction of 60
    assert snapshot(path) == before


# ------------------------------------------------------------------------------------------------ HF tokenizer


@pytest.fixture(scope="module")
def hf_tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer.json trained here on a small corpus (vocabulary 400)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(DOCS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    root = tmp_path_factory.mktemp("tok") / "my-bpe"
    root.mkdir()
    tok.save(str(root / "tokenizer.json"))
    return root


def test_hf_tokenizer_folder_or_file(hf_tokenizer_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "docs.jsonl", "w") as fh:
        for d in DOCS:
            fh.write(json.dumps({"body": d}) + "\n")
    before = snapshot(hf_tokenizer_dir)
    cfg = DataConfig(dataset=str(src), data_dir=str(tmp_path / "c"), tokenizer=str(hf_tokenizer_dir),
                     text_field="body", val_fraction=0.1)
    m = prepare(cfg, progress=False)
    assert m.tokenizer == str(hf_tokenizer_dir / "tokenizer.json") and m.n_vocab == 400 and m.eot == 0
    assert m.dtype == "uint16" and m.train_docs + m.val_docs == len(DOCS)
    # the file and the folder name the same tokenizer, so the same cache
    same = DataConfig(dataset=str(src), data_dir=str(tmp_path / "c"), tokenizer=str(hf_tokenizer_dir / "tokenizer.json"),
                      text_field="body", val_fraction=0.1)
    assert prepare(same, progress=False) == m
    with pytest.raises(ConfigError, match="vocab_size 399 is smaller .* 400 tokens"):
        check_vocab(m, 399)
    check_vocab(m, 400)
    # the manifest alone rebuilds the tokenizer (the original file may be gone)
    moved = tmp_path / "moved.json"
    os.rename(hf_tokenizer_dir / "tokenizer.json", moved)
    try:
        tok = get_tokenizer(load_manifest(m.dir))
    finally:
        os.rename(moved, hf_tokenizer_dir / "tokenizer.json")
    assert tok.n_vocab == 400 and tok.decode(tok.encode(DOCS[5])) == DOCS[5]
    val = open_tokens(m.val_path, m.dtype)
    assert int(tok.token_bytes()[val].sum()) == m.val_bytes  # bits per byte sees every byte once
    assert snapshot(hf_tokenizer_dir) == before
    r = lmsprint("prepare", "--dataset", src, "--tokenizer", tmp_path / "nope", "--data_dir", tmp_path / "c2",
                 cwd=tmp_path)
    assert "unknown tokenizer" in one_line_error(r)


# ------------------------------------------------------------------------------------------------ hub sources

ROWS = 24


def _parquet(path, columns):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(columns), path)


def _readme(root, configs):
    """A dataset card whose YAML `configs` map config names to data files, as the hub repositories have."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {s}\n    path: {p}" for s, p in splits.items()]
    (root / "README.md").write_text("\n".join(lines + ["---", "", "A local copy laid out like the hub repository."]))


def _texts(tag, n=ROWS):
    return [f"{tag} document {i}. " + DOCS[i % len(DOCS)][:200] for i in range(n)]


def _layout(name, root):
    """Write a folder laid out like HUB[name]'s repository; returns (train texts of the config used, article count)."""
    hub = HUB[name]
    repo = root.joinpath(*hub.repo.split("/"))
    repo.mkdir(parents=True)
    if name == "slimpajama":  # data/{train,validation,test}-0000k-of-000nn-<hash>.parquet; text, meta, index
        texts = _texts("slim")
        meta = [{"redpajama_set_name": "RedPajamaC4"}] * ROWS
        _parquet(repo / "data/train-00000-of-00002-ab2b35705f029d94.parquet",
                 {"text": texts[:12], "meta": meta[:12], "__index_level_0__": list(range(12))})
        _parquet(repo / "data/train-00001-of-00002-f2ff493d6eb6da4e.parquet",
                 {"text": texts[12:], "meta": meta[12:], "__index_level_0__": list(range(12, 24))})
        for split in ("validation", "test"):
            _parquet(repo / f"data/{split}-00000-of-00001-9f769cf7ce219017.parquet",
                     {"text": _texts(f"{split} slim", 3), "meta": meta[:3], "__index_level_0__": [0, 1, 2]})
        return texts, ROWS
    if name == "wikitext":  # one config folder per variant; rows are lines, articles start at " = Title = "
        lines, n_articles = [], 0
        for a in range(6):
            lines += ["", f" = Article {a} = \n", "", f" Text of article {a} . \n", " = = Section = = \n", " More . \n"]
            n_articles += 1
        for cfg in ("wikitext-103-raw-v1", "wikitext-2-raw-v1"):
            rows = lines if cfg == hub.config else [" = Other config = \n", " wrong . \n"]
            _parquet(repo / cfg / "train-00000-of-00001.parquet", {"text": rows})
            _parquet(repo / cfg / "validation-00000-of-00001.parquet", {"text": [" = Val = \n", " v . \n"]})
        _readme(repo, {c: {"train": f"{c}/train-*", "validation": f"{c}/validation-*"}
                       for c in ("wikitext-103-raw-v1", "wikitext-2-raw-v1")})
        return ["".join(lines[1:6])], n_articles
    if name == "openwebtext2":  # webtext2-000kk-of-00027.parquet at the top (no split in the names: all train)
        texts = _texts("owt2")
        _parquet(repo / "webtext2-00000-of-00027.parquet", {"text": texts[:10]})
        _parquet(repo / "webtext2-00001-of-00027.parquet", {"text": texts[10:]})
        return texts, ROWS
    if name == "arxiv":  # configs document / section; fields article, abstract
        texts = _texts("arxiv")
        for cfg in ("document", "section"):
            body = texts if cfg == hub.config else _texts("section-config")
            _parquet(repo / cfg / "train-00000-of-00015.parquet", {"article": body, "abstract": ["abs"] * ROWS})
            _parquet(repo / cfg / "validation-00000-of-00001.parquet", {"article": ["val"], "abstract": ["abs"]})
        _readme(repo, {c: {"train": f"{c}/train-*", "validation": f"{c}/validation-*"} for c in ("document", "section")})
        return texts, ROWS
    if name == "fineweb-edu":  # default: data/*/*, sample-10BT: sample/10BT/*; text plus metadata columns
        texts = _texts("fwedu")
        cols = lambda t: {"text": t, "id": [str(i) for i in range(len(t))], "dump": ["CC-MAIN-2024-10"] * len(t),  # noqa
                          "url": ["https://example.org"] * len(t), "score": [3.1] * len(t)}
        _parquet(repo / "sample/10BT/000_00000.parquet", cols(texts))
        _parquet(repo / "data/CC-MAIN-2024-10/000_00000.parquet", cols(_texts("full-dump")))
        _readme(repo, {"default": {"train": "data/*/*"}, "sample-10BT": {"train": "sample/10BT/*"}})
        return texts, ROWS
    raise AssertionError(f"no local layout for {name}")


@pytest.fixture(scope="module")
def hub_mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return root, {name: _layout(name, root) for name in HUB}


@pytest.mark.parametrize("name", list(HUB))
def test_hub_source_streams_its_config_and_field(hub_mirror, name, tmp_path, monkeypatch):
    root, layouts = hub_mirror
    texts, n_docs = layouts[name]
    monkeypatch.setenv(MIRROR_ENV, str(root))
    before = snapshot(root)
    m = prepare(DataConfig(dataset=name, data_dir=str(tmp_path), val_fraction=0.2), progress=False)
    assert m.train_docs + m.val_docs == n_docs
    tok = get_tokenizer(m)
    text = tok.decode(open_tokens(m.train_path, m.dtype)) + tok.decode(open_tokens(m.val_path, m.dtype))
    assert all(t in text for t in texts)  # the configured config's train split, field HUB[name].text_field
    # nothing from another split or config: the val/test files, the other config, the full dump
    for other in ("validation slim", "test slim", "Other config", "section-config", "full-dump", " = Val = ",
                  "val\n"):
        assert other not in text
    assert HUB[name].repo in m.source
    assert snapshot(root) == before


def test_any_hub_dataset_by_name(hub_mirror, tmp_path, monkeypatch):
    root, layouts = hub_mirror
    monkeypatch.setenv(MIRROR_ENV, str(root))
    m = prepare(DataConfig(dataset="hf:ccdv/arxiv-summarization:section", text_field="article",
                           data_dir=str(tmp_path), val_fraction=0.2), progress=False)
    tok = get_tokenizer(m)
    assert "section-config document 3" in tok.decode(open_tokens(m.train_path, m.dtype))
    with pytest.raises(DataError, match="no 'text' field \\(fields: article, abstract\\)"):
        prepare(DataConfig(dataset="hf:ccdv/arxiv-summarization:section", data_dir=str(tmp_path)), progress=False)
    with pytest.raises(ConfigError, match="not a hub dataset name"):
        resolve_source(DataConfig(dataset="hf:no-slash"))


def test_hub_name_without_network_is_one_line(tmp_path):
    r = lmsprint("prepare", "--dataset", "hf:someone/some-corpus:en", "--text_field", "content", "--data_dir",
                 tmp_path / "c", "--quiet", cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert "cannot reach the Hugging Face hub to stream 'hf:someone/some-corpus:en'" in one_line_error(r)


# ---------------------------------------------------------------------------------------------------- plain text

TEXTS = {
    "paragraphs": "first para\nline two\n\nsecond\n\n\nthird after three newlines\n\n\n\nfourth\n",
    "crlf_and_cr": "a\r\nb\r\n\r\nc\rd\r\re\n",
    "no_final_newline": "\n\nleading blanks\n\nlast",
    "bad_bytes": b"caf\xe9 ok\n\n\xff\xfe tail\n".decode("latin-1"),
    "empty": "",
    "only_blank": "\n\n\n\n",
}


@pytest.mark.parametrize("chunk", [3, 7, 10 << 20])
@pytest.mark.parametrize("name", sorted(TEXTS))
@pytest.mark.parametrize("sample_by", ["paragraph", "document"])
def test_text_files_read_as_datasets_text_builder_does(tmp_path, name, chunk, sample_by):
    """Plain .txt files need no `datasets`; the rows equal `load_dataset("text", ...)`'s, chunk boundaries included."""
    datasets = pytest.importorskip("datasets")
    path = tmp_path / f"{name}.txt"
    raw = TEXTS[name].encode("latin-1") if name == "bad_bytes" else TEXTS[name].encode()
    path.write_bytes(raw)
    ours = list(text_docs(str(path), sample_by, chunk_chars=chunk))
    kw = {"chunksize": chunk} if sample_by == "paragraph" else {}
    ds = datasets.load_dataset("text", data_files=[str(path)], split="train", streaming=True, sample_by=sample_by,
                               encoding_errors="replace", **kw)
    assert ours == [row["text"] for row in ds]


def test_text_dataset_prepares_without_the_datasets_library(corpus, tmp_path):
    """`--dataset some.txt` with only the core install: `datasets` made unimportable in a fresh process."""
    code = ("import sys\nsys.modules['datasets'] = None\n"
            "from lmsprint.config import DataConfig\nfrom lmsprint.data.prepare import prepare\n"
            f"m = prepare(DataConfig(dataset={str(corpus / 'tiny.txt')!r}, data_dir={str(tmp_path)!r}, "
            "tokenizer='char'), progress=False)\nprint('TOKENS', m.train_tokens + m.val_tokens)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout.split("TOKENS")[-1]) > 50_000  # 300 paragraphs of 60 words, one token per character


def test_hub_rows_that_are_not_text_are_refused(hub_mirror, tmp_path, monkeypatch):
    """fineweb-edu's `score` column is a float: streamed rows of it are refused, never turned into "3.1"."""
    root, _ = hub_mirror
    monkeypatch.setenv(MIRROR_ENV, str(root))
    with pytest.raises(DataError) as e:
        prepare(DataConfig(dataset="hf:HuggingFaceFW/fineweb-edu:sample-10BT", text_field="score",
                           data_dir=str(tmp_path)), progress=False)
    assert "HuggingFaceFW/fineweb-edu row 1: the 'score' field is a number, not a string" in cli_message(e.value)


def test_save_to_disk_dataset_without_splits_gets_the_val_floor_like_a_folder(tmp_path):
    """A Dataset of 250 short documents: the val fraction is raised toward the 65,536-token floor (at most 10%) as
    for the same documents written as files, not left at 0.005 (which gave 1 document, 0.4%)."""
    docs = [d[:300] for d in shakespeare_documents()[:250]]
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "ds"))
    folder = tmp_path / "files"
    folder.mkdir()
    for i, d in enumerate(docs):
        (folder / f"{i:03d}.txt").write_text(d)
    m_disk = prepare(DataConfig(dataset=str(tmp_path / "ds"), data_dir=str(tmp_path / "c")), progress=False)
    m_dir = prepare(DataConfig(dataset=str(folder), data_dir=str(tmp_path / "c")), progress=False)
    assert m_disk.val_target == m_dir.val_target == 0.1  # the same rule: the floor's cap of 10%
    assert m_disk.val_docs >= 10 and m_disk.val_achieved > 0.04, (m_disk.val_docs, m_disk.val_achieved)
    # max_docs scales the estimate, as it bounds a folder's
    m = prepare(DataConfig(dataset=str(tmp_path / "ds"), data_dir=str(tmp_path / "c2"), max_docs=100),
                progress=False)
    assert m.val_target == 0.1 and m.train_docs + m.val_docs == 100
