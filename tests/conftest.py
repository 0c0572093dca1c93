"""Shared pytest fixtures (each engineer appends their own below)."""

import pytest


@pytest.fixture(scope="session")
def shakespeare_manifest(tmp_path_factory):
    """The embedded Shakespeare text prepared once per test session with the GPT-2 tokenizer (a Manifest)."""
    from lmsprint.config import DataConfig
    from lmsprint.data.prepare import prepare

    data_dir = tmp_path_factory.mktemp("data_cache")
    return prepare(DataConfig(dataset="shakespeare", data_dir=str(data_dir)), progress=False)
