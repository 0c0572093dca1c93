"""Data that is not what it claims: undecodable or non-text files, broken JSON lines, damaged parquet, token files
and manifests edited after prepare, and data too short for the run; each ends in one line (exit 2 from the CLI)
before any training. Also: the val split holds close to `val_fraction` of the tokens whatever the file layout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lmsprint.config import DataConfig, build_config
from lmsprint.data import integrity
from lmsprint.data.manifest import MANIFEST, load_manifest
from lmsprint.data.prepare import prepare
from lmsprint.data.sources import shakespeare_documents
from lmsprint.data.split import VAL_FLOOR_TOKENS, cut_pieces, split_document
from lmsprint.data.tokenizer import get_tokenizer
from lmsprint.errors import DataError, cli_message
from lmsprint.training.data import check_data

PARAS = [f"Paragraph {i}: " + "the quick brown fox jumps over the lazy dog. " * 8 for i in range(80)]


def _cli(*args, cwd=None):
    r = subprocess.run([sys.executable, "-m", "lmsprint", *map(str, args)], capture_output=True, text=True,
                       timeout=300, cwd=cwd)
    return r.returncode, r.stderr.strip().splitlines()


def _one_line(rc_lines, *fragments):
    rc, lines = rc_lines
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("lmsprint: error: "), lines
    assert "Traceback" not in lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def _cfg(tmp_path, path, **kw):
    return DataConfig(dataset=str(path), data_dir=str(tmp_path / "cache"), num_proc=1, **kw)


def _text_bytes():
    return "\n\n".join(PARAS).encode() + b"\n"


# ------------------------------------------------------------------------------------------------ text policy

def test_stray_byte_is_replaced_counted_and_warned(tmp_path, capsys):
    (tmp_path / "a.txt").write_bytes(_text_bytes()[:500] + b"caf\xe9 " + _text_bytes()[500:])
    (tmp_path / "b.jsonl").write_bytes(b"".join(json.dumps({"text": p}).encode() + b"\n" for p in PARAS[:40])
                                       + b'{"text": "na\xefve"}\n')
    m = prepare(_cfg(tmp_path, tmp_path), progress=False)
    assert m.replaced_bytes == {"a.txt": 1, "b.jsonl": 1}
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln and "U+FFFD" in ln]
    assert len(warn) == 1 and "a.txt (1)" in warn[0] and "b.jsonl (1)" in warn[0]
    tok = get_tokenizer(m)
    text = tok.decode(np.concatenate([np.fromfile(m.train_path, m.dtype), np.fromfile(m.val_path, m.dtype)]))
    assert text.count("\ufffd") == 2 and "caf\ufffd" in text and "na\ufffdve" in text
    assert load_manifest(m.dir).replaced_bytes == m.replaced_bytes


def test_latin1_text_is_refused_with_the_byte_offset(tmp_path):
    (tmp_path / "fr.txt").write_bytes(("Le café était très animé. " * 50).encode("latin-1"))
    with pytest.raises(DataError) as e:
        prepare(_cfg(tmp_path, tmp_path / "fr.txt"), progress=False)
    msg = cli_message(e.value)
    assert "fr.txt is not UTF-8 text" in msg and "200 undecodable bytes of 1,300 (first at byte offset 6)" in msg and "iconv" in msg
    assert not os.path.exists(tmp_path / "cache") or not any(
        os.path.exists(os.path.join(r, MANIFEST)) for r, _, _ in os.walk(tmp_path / "cache"))


def test_random_bytes_and_truncated_jsonl_from_the_cli(tmp_path):
    rnd = tmp_path / "random.txt"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    _one_line(_cli("prepare", "--dataset", rnd, "--data_dir", tmp_path / "c", "--quiet"),
              "random.txt is not UTF-8 text", "byte offset")
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(json.dumps({"text": p}).encode() + b"\n" for p in PARAS[:30]) + b'{"text": "half a re')
    _one_line(_cli("prepare", "--dataset", cut, "--data_dir", tmp_path / "c", "--quiet"),
              "cut.jsonl line 31", "truncated", "never skips")
    assert rnd.read_bytes()[:4] and cut.read_bytes().endswith(b"half a re")  # the user's files are untouched


def test_corrupt_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": PARAS}), good)
    data = good.read_bytes()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.parquet").write_bytes(data[: len(data) // 2])  # cut in half: no footer
    with pytest.raises(DataError, match="x.parquet is not a readable parquet file"):
        prepare(_cfg(tmp_path, tmp_path / "bad"), progress=False)


# ------------------------------------------------------------------------------------------------ manifest, token files

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return prepare(DataConfig(dataset="shakespeare-char", data_dir=str(root), max_docs=60), progress=False)


def _copy(m, dest):
    shutil.copytree(m.dir, dest)
    return str(dest)


def _edit_manifest(d, **fields):
    path = os.path.join(d, MANIFEST)
    with open(path) as fh:
        data = json.load(fh)
    data.update(fields)
    with open(path, "w") as fh:
        json.dump(data, fh)


@pytest.mark.parametrize("field,value,fragment", [
    ("n_vocab", 60, "field 'n_vocab' is 60, but the char vocabulary has"),
    ("dtype", "uint32", "field 'dtype' is 'uint32', but n_vocab"),
    ("dtype", "int8", "field 'dtype' is 'int8', not one of uint16, uint32"),
    ("n_vocab", "65", "field 'n_vocab' is '65', not a whole number"),
    ("train_tokens", True, "field 'train_tokens' is True"),
    ("vocab", None, "field 'vocab' is None"),
    ("max_id", {"train": 99999, "val": 3}, "field 'max_id'"),
    ("sha256", {"train": "abc"}, "field 'sha256'"),
    ("version", 1, "prepared by an older lmsprint (data format 1"),
])
def test_edited_manifest_field_is_named(prepared, tmp_path, field, value, fragment):
    d = _copy(prepared, tmp_path / "copy")
    _edit_manifest(d, **{field: value})
    with pytest.raises(DataError) as e:
        load_manifest(d)
    msg = cli_message(e.value)
    assert fragment in msg and "\n" not in msg and ("--data_dir" in msg)


def _flip(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([(b[0] + 1) % 50]))


def test_changed_token_bytes_same_size(prepared, tmp_path):
    d = _copy(prepared, tmp_path / "copy")
    val = os.path.join(d, "val.bin")
    size = os.path.getsize(val)
    _flip(val, size // 2 + 1)
    assert os.path.getsize(val) == size
    with pytest.raises(DataError, match="val token file .* its bytes changed since it was prepared"):
        load_manifest(d)
    _one_line(_cli("prepare", "--dataset", d, "--verify", "--quiet"), "its bytes changed since it was prepared")


def test_sampled_blocks_and_full_hash_of_a_big_file(tmp_path):
    path = str(tmp_path / "big.bin")
    (np.arange(5 * 2**20, dtype=np.uint16) % 50000).tofile(path)  # 10 MiB: 32 sampled blocks cover 2 MiB
    sha, top, blocks = integrity.token_file_facts(path, "uint16")
    size = os.path.getsize(path)
    outside = next(o for o in range(0, size, 4096) if all(not b <= o < b + integrity.BLOCK_BYTES
                                                           for b in blocks["offsets"]))
    _flip(path, outside)
    integrity.verify_token_file("train", path, "uint16", 50257, sha, top, blocks, False, "")  # not sampled
    with pytest.raises(DataError, match="does not match the SHA-256"):
        integrity.verify_token_file("train", path, "uint16", 50257, sha, top, blocks, True, "")
    _flip(path, blocks["offsets"][7] + 10)
    with pytest.raises(DataError, match=f"in the block at byte offset {blocks['offsets'][7]:,}"):
        integrity.verify_token_file("train", path, "uint16", 50257, sha, top, blocks, False, "")


def test_prepare_verify_ok(prepared, capsys):
    from lmsprint.cli import main

    assert main(["prepare", "--dataset", prepared.dir, "--verify", "--quiet"]) == 0
    assert "match the manifest's SHA-256" in capsys.readouterr().out


def test_ids_outside_the_vocabulary_in_sampled_blocks(tmp_path):
    path = tmp_path / "t.bin"
    ids = np.arange(300_000, dtype=np.uint16) % 1000
    ids[5] = 60_000
    ids.tofile(path)
    sha, top, blocks = integrity.token_file_facts(str(path), "uint16")
    assert top == 60_000 and blocks["offsets"][0] == 0 and blocks["offsets"][-1] == 600_000 - integrity.BLOCK_BYTES
    with pytest.raises(DataError, match="token id 60000 .* outside the vocabulary of 50257"):
        integrity.verify_token_file("train", str(path), "uint16", 50257, sha, top, blocks, False, "re-prepare")


def test_sampled_check_cost(tmp_path):
    """The per-open check of a 10 MB token file: sampled blocks only (full hash off) is a few ms."""
    import time

    path = tmp_path / "big.bin"
    (np.arange(5 * 2**20, dtype=np.uint16) % 50000).tofile(path)
    sha, top, blocks = integrity.token_file_facts(str(path), "uint16")
    t0 = time.perf_counter()
    integrity.verify_token_file("train", str(path), "uint16", 50257, sha, top, blocks, False, "")
    assert time.perf_counter() - t0 < 0.5


# ------------------------------------------------------------------------------------------------ before step 1

def _run_cfg(**values):
    return build_config(values, None)


def test_lengths_and_prefix_checked_before_step_1(prepared):
    tok = get_tokenizer(prepared)
    check_data(_run_cfg(sequence_length=64, vocab_size=128, eval_seq_prefix="ROMEO:"), prepared, tok)
    n_val, n_train = prepared.val_tokens, prepared.train_tokens
    with pytest.raises(DataError) as e:
        check_data(_run_cfg(sequence_length=n_val, vocab_size=128), prepared, tok)
    assert cli_message(e.value).startswith(f"the val split of shakespeare-char has {n_val:,} tokens, fewer than "
                                           f"--sequence_length + 1 = {n_val + 1:,}; use --sequence_length <= ")
    with pytest.raises(DataError, match=f"the train split .* has {n_train:,} tokens"):
        check_data(_run_cfg(sequence_length=n_train + 5, vocab_size=128), prepared, tok)
    with pytest.raises(DataError) as e:
        check_data(_run_cfg(sequence_length=64, vocab_size=128, eval_seq_prefix="ROMEO: ☃"), prepared, tok)
    assert "--eval_seq_prefix 'ROMEO: ☃' has '☃', not in the char vocabulary" in cli_message(e.value)
    check_data(_run_cfg(sequence_length=64, vocab_size=128, eval_seq_prefix="☃", sample_tokens=0), prepared, tok)


@pytest.mark.slow
def test_sequence_longer_than_val_split_from_the_cli(prepared, tmp_path):
    line = _one_line(_cli("train", "--dataset", prepared.dir, "--n_layer", 1, "--n_embd", 16, "--n_head", 2,
                          "--vocab_size", 128, "--sequence_length", prepared.val_tokens + 10, "--batch_size", 1,
                          "--iterations", 2, "--progress", "false", "--results_base_folder", tmp_path / "exps",
                          cwd=tmp_path),
                     "the val split", f"fewer than --sequence_length + 1 = {prepared.val_tokens + 11:,}")
    assert line
    assert not any("summary.json" in fs and "checkpoints" in ds for _, ds, fs in os.walk(tmp_path / "exps"))


# ------------------------------------------------------------------------------------------------ val split

def test_pieces_reassemble_and_stay_on_one_side():
    doc = "".join(shakespeare_documents()[:12])
    pieces = cut_pieces(doc)
    assert "".join(pieces) == doc and len(pieces) > 5 and min(map(len, pieces[:-1])) >= 4000
    segs = split_document(doc, 0.3)
    assert "".join(t for _, t in segs) == doc
    assert all(a[0] != b[0] for a, b in zip(segs, segs[1:]))  # consecutive same-side pieces are joined
    assert split_document(doc, 0.3) == segs  # the same text, the same split


def _layout(kind, root):
    docs = shakespeare_documents()
    root.mkdir()
    if kind == "books":  # the plays in 4 books of about equal size
        cuts = np.array_split(np.arange(len(docs)), 4)
        for i, c in enumerate(cuts):
            (root / f"book{i}.txt").write_text("".join(docs[j] for j in c), encoding="utf-8")
    elif kind == "one_file":
        (root / "all.txt").write_text("\n".join(docs), encoding="utf-8")
    else:  # one small file per scene
        for i, d in enumerate(docs):
            (root / f"scene{i:04d}.txt").write_text(d, encoding="utf-8")
    return root


@pytest.mark.parametrize("kind", ["books", "one_file", "many_files"])
def test_val_fraction_holds_for_every_layout(tmp_path, kind):
    src = _layout(kind, tmp_path / kind)
    m = prepare(_cfg(tmp_path, src, tokenizer="char", val_fraction=0.03), progress=False)
    assert m.val_fraction == 0.03 and m.val_target == 0.03  # 5M characters: the floor is far below 3%
    achieved = m.val_tokens / (m.val_tokens + m.train_tokens)
    assert achieved == pytest.approx(m.val_achieved) and 0.015 <= achieved <= 0.06, achieved
    assert m.val_tokens >= VAL_FLOOR_TOKENS


def test_val_floor_raises_the_fraction_and_warns_when_it_cannot(tmp_path, capsys):
    src = tmp_path / "small"
    src.mkdir()
    (src / "a.txt").write_text("".join(shakespeare_documents()[:200]), encoding="utf-8")  # about 1.3M characters
    m = prepare(_cfg(tmp_path, src, val_fraction=0.005, tokenizer="char"), progress=False)
    assert 0.005 < m.val_target <= 0.1 and m.val_tokens >= VAL_FLOOR_TOKENS * 0.8
    tiny = tmp_path / "tiny.txt"
    tiny.write_bytes(_text_bytes())
    capsys.readouterr()
    m = prepare(_cfg(tmp_path, tiny), progress=False)
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "floor" in ln]
    assert m.val_target == 0.1 and len(warn) == 1 and f"below the {VAL_FLOOR_TOKENS:,}-token floor" in warn[0]


# ------------------------------------------------------------------------------------------------ fields and files
# issue 19.4: a text field that is not text is refused (file, line or row, type), never turned into text; flags
# that cannot apply are refused; special files are skipped with a line and never opened


@pytest.mark.parametrize("name,body,fragments", [
    ("a.jsonl", '{"text": "fine"}\n\n{"text": 12}\n', ["a.jsonl line 3: the 'text' field is a number (12)"]),
    ("a.jsonl", '{"text": "fine"}\n{"text": ["a", "b"]}\n', ["line 2: the 'text' field is an array ([\"a\", \"b\"])"]),
    ("a.jsonl", '{"text": true}\n', ["line 1: the 'text' field is a boolean (true)"]),
    ("a.jsonl", '{"text": {"body": "x"}}\n', ["line 1: the 'text' field is an object"]),
    ("a.json", '[{"text": "fine"}, {"text": 3.5}]', ["a.json record 2: the 'text' field is a number (3.5)"]),
])
def test_json_text_field_that_is_not_text(tmp_path, in_process, name, body, fragments):
    (tmp_path / name).write_text(body)
    p = in_process("prepare", "--dataset", name, "--data_dir", "cache", "--quiet")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    for f in fragments + ["not a string; lmsprint does not turn other types into text", "--text_field"]:
        assert f in p.stderr, p.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.bin"))


def test_null_text_is_an_empty_document(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in PARAS) + '{"text": null}\n')
    m = prepare(_cfg(tmp_path, tmp_path / "a.jsonl"), progress=False)
    assert m.docs == len(PARAS) + 1


def test_parquet_and_save_to_disk_columns_that_are_not_text(tmp_path, in_process):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    pq.write_table(pa.table({"text": [1, 2, 3], "body": ["a", "b", "c"]}), str(tmp_path / "p.parquet"))
    p = in_process("prepare", "--dataset", "p.parquet", "--data_dir", "cache", "--quiet")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "p.parquet rows 1-3: the 'text' column has type int64, not a string" in p.stderr, p.stderr
    datasets.Dataset.from_dict({"text": [[1, 2], [3]]}).save_to_disk(str(tmp_path / "ds"))
    p = in_process("prepare", "--dataset", "ds", "--data_dir", "cache", "--quiet")
    assert p.returncode == 2 and "ds' rows 1-2: the 'text' column has type list<item: int64>" in p.stderr, p.stderr


def test_flags_that_cannot_apply_to_the_dataset(tmp_path, in_process):
    (tmp_path / "a.txt").write_bytes(_text_bytes())
    p = in_process("prepare", "--dataset", "a.txt", "--text_field", "body", "--data_dir", "cache")
    assert p.returncode == 2 and "--text_field does not apply to" in p.stderr
    assert ".txt files have no fields" in p.stderr
    p = in_process("prepare", "--dataset", "shakespeare-char", "--tokenizer", "gpt2", "--data_dir", "cache")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "--dataset shakespeare-char is the char tokenizer's" in p.stderr and "--dataset shakespeare" in p.stderr
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_special_files_are_skipped_with_a_line_and_never_opened(tmp_path, capsys):
    import threading

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes(_text_bytes())
    fifo = tmp_path / "d" / "stream.txt"
    os.mkfifo(fifo)
    # a watchdog: if prepare opened the FIFO for reading it would block until a writer comes; this writer comes after
    # 60 s, so a regression fails the test below instead of hanging the suite
    opened = []

    def unblock():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK) if done.wait(60) is False else None
        if fd is not None:
            opened.append(True)
            os.close(fd)

    done = threading.Event()
    t = threading.Thread(target=unblock, daemon=True)
    t.start()
    try:
        m = prepare(_cfg(tmp_path, tmp_path / "d"), progress=False)
    finally:
        done.set()
        t.join()
    assert not opened, "prepare opened the FIFO"
    assert m.docs == len(PARAS) and "(1 file)" in m.source
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "not regular files" in ln]
    assert warn == [f"lmsprint: warning: skipped 1 file(s) in '{tmp_path / 'd'}' that are not regular files (FIFOs, "
                    "sockets or devices): stream.txt"]
    with pytest.raises(DataError, match="is not a regular file"):
        prepare(_cfg(tmp_path, fifo), progress=False)


# ------------------------------------------------------------------------------------------------ ids in every batch


def test_every_batch_is_checked_against_the_vocabulary(tmp_path):
    """open_tokens(..., n_vocab): a window holding an id >= n_vocab is a DataError naming the file, the token offset
    and the id, for training batches and val batches alike."""
    from lmsprint.data.loader import BatchSampler, open_tokens, val_batches

    ids = np.arange(10_000, dtype=np.uint16) % 60
    ids[4321] = 60_000
    path = tmp_path / "train.bin"
    ids.tofile(path)
    tokens = open_tokens(str(path), "uint16", n_vocab=64)
    with pytest.raises(DataError) as e:
        list(val_batches(tokens, 16, 8))
    assert cli_message(e.value).startswith(f"token file {path} holds id 60000 at token 4,321, outside the vocabulary "
                                           "of 64 ids")
    sampler = BatchSampler(tokens, 16, 64, seed=0)
    hit = next(s for s in range(1000) if any(a <= 4321 <= a + 16 for a in sampler.starts(s)))
    for s in range(hit):
        sampler.get(s)  # the steps before it are fine
    with pytest.raises(DataError, match="holds id 60000 at token 4,321"):
        sampler.get(hit)
    assert open_tokens(str(path), "uint16", in_ram=True, n_vocab=64)[4321:4330].n_vocab == 64  # slices keep it
    list(val_batches(open_tokens(str(path), "uint16"), 16, 8))  # no n_vocab: unchecked, as before


@pytest.mark.slow
def test_ids_past_the_vocabulary_outside_sampled_blocks_stop_the_run_at_that_step(prepared, tmp_path):
    """A prepared train.bin over 32 MiB (checked in sampled blocks when opened) damaged between the blocks: the run
    starts, and the first batch that reads the damage ends it in one line (summary `failed`), never an IndexError."""
    from lmsprint.data.manifest import load_manifest

    d = _copy(prepared, tmp_path / "big")
    train = os.path.join(d, "train.bin")
    base = np.fromfile(train, dtype=np.uint16)
    big = np.resize(base, 17 * 2**20)  # 34 MiB
    big.tofile(train)
    sha, top, blocks = integrity.token_file_facts(train, "uint16")
    _edit_manifest(d, train_tokens=int(len(big)), train_bytes=int(len(big)), sha256={**prepared.sha256, "train": sha},
                   max_id={**prepared.max_id, "train": top}, blocks={**prepared.blocks, "train": blocks})
    load_manifest(d)  # a valid prepared folder
    # damage: 2**18 ids 60000 (512 KiB) between two sampled blocks (same size: only a full hash would see it)
    offsets, n_bad = blocks["offsets"], 2**18
    start = (offsets[0] + integrity.BLOCK_BYTES + 4096) // 2  # a token index
    assert start * 2 + 2 * n_bad < offsets[1]
    with open(train, "r+b") as fh:
        fh.seek(start * 2)
        fh.write(np.full(n_bad, 60_000, dtype=np.uint16).tobytes())
    load_manifest(d)  # still opens: the sampled blocks are intact
    exps = tmp_path / "exps"
    rc, lines = _cli("train", "--dataset", d, "--n_layer", "1", "--n_embd", "16", "--n_head", "2", "--sequence_length",
                     "64", "--batch_size", "8", "--acc_steps", "1", "--iterations", "300", "--eval_freq", "1000",
                     "--eval_tokens", "64", "--final_eval", "fixed", "--sample_tokens", "0", "--vocab_size", "128",
                     "--progress", "false", "--threads", "1", "--results_base_folder", exps, "--exp_name", "r",
                     cwd=tmp_path)
    errors = [ln for ln in lines if ln.startswith("lmsprint: error: ")]
    assert rc == 2 and len(errors) == 1 and not any("Traceback" in ln for ln in lines), lines[-20:]
    m = __import__("re").search(r"token file .*train\.bin holds id 60000 at token ([\d,]+), outside the vocabulary "
                                r"of (\d+) ids", errors[0])
    assert m and start <= int(m.group(1).replace(",", "")) < start + n_bad and int(m.group(2)) == prepared.n_vocab
    with open(exps / "r" / "summary.json") as fh:
        s = json.load(fh)
    assert s["status"] == "failed" and "holds id 60000" in s["error"]
    assert s["iterations_done"] >= 1  # it trained, then stopped at the step whose batch read the damage
