"""Shared pytest fixtures: the prepared Shakespeare data, one thread, the tiny config shape, a tiny local corpus."""

import random

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
