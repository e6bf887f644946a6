"""Shared test set-up: offline Hugging Face, a private rules cache, and paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(autouse=True)
def _private_rules_cache(tmp_path_factory, monkeypatch):
    # Each test session checks the rule base itself instead of trusting a cache from outside.
    monkeypatch.setenv("MEMFIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "memfit-cache"))
    # No test reads or writes the developer's store of measured runs: each gets an empty one of its own.
    monkeypatch.setenv("MEMFIT_STORE", str(tmp_path_factory.mktemp("memfit-store") / "store.sqlite"))


# Property tests explore the same examples on every run, so CI cannot flake; set
# HYPOTHESIS_PROFILE=explore to search afresh while developing.
from hypothesis import settings as _settings  # noqa: E402

_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
_settings.register_profile("explore", deadline=None)
_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def ax_root(tmp_path, monkeypatch):
    """The axolotl example files (tests/fixtures/upstream/axolotl) at their paths, as the cwd."""
    from upstream import tool_root

    monkeypatch.chdir(tool_root("axolotl", tmp_path / "axolotl"))
    return tmp_path / "axolotl"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/*/advice.json and deepspeed.json from the current code")
    parser.addoption("--update-docs", action="store_true",
                     help="rewrite the whole outputs shown in docs (blocks without '...') from the current code")
