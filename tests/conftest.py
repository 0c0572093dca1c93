"""Shared pytest fixtures: the prepared Shakespeare data (GPT-2 BPE and characters), one thread, the tiny config
shape, a tiny local corpus, the CLI run in this process."""

import random
from types import SimpleNamespace

import pytest
import torch

from tiny import tiny_config


@pytest.fixture(scope="session")
def shakespeare_manifest(tmp_path_factory):
    """The embedded Shakespeare text prepared once per test session with the GPT-2 tokenizer (a Manifest)."""
    from lmsprint.config import DataConfig
    from lmsprint.data.prepare import prepare

    data_dir = tmp_path_factory.mktemp("data_cache")
    return prepare(DataConfig(dataset="shakespeare", data_dir=str(data_dir)), progress=False)


@pytest.fixture(scope="session")
def char_data(tmp_path_factory):
    """`shakespeare-char` prepared once per test session: the prepared folder, usable as `--dataset` (tests that
    change its files copy it first)."""
    from lmsprint.config import DataConfig
    from lmsprint.data.prepare import prepare

    data_dir = tmp_path_factory.mktemp("char_data")
    return str(prepare(DataConfig(dataset="shakespeare-char", data_dir=str(data_dir)), progress=False).dir)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one thread: faster and steadier than two on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny():
    """`tiny(**overrides)` -> a validated RunConfig of the shared tiny shape (tests/tiny.py)."""
    return tiny_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder with one small text file (tiny.txt, 300 paragraphs of random words): a local dataset to prepare fast."""
    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog and runs away from home".split()
    (d / "tiny.txt").write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(300)))
    return d


@pytest.fixture
def in_process(capsys, monkeypatch, tmp_path):
    """`in_process(*args, cwd=tmp_path)`: `lmsprint ARGS` run by the CLI's `main` in this process -> returncode,
    stdout, stderr. The same code as a subprocess without a Python start-up each: for checks of flags and messages."""
    from lmsprint.cli import main

    def run(*args, cwd=None):
        monkeypatch.chdir(cwd or tmp_path)
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own exits (--help, --version, usage errors)
            code = e.code
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)
    return run
