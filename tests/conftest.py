"""Shared test setup: no test may reach the network, and every test runs on the CPU."""

from __future__ import annotations

import os

import pytest

# Set before anything imports huggingface_hub, which reads these once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch, tmp_path_factory):
    """Offline, with an empty Hugging Face cache of the session's own, so nothing cached on this machine leaks in."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    home = tmp_path_factory.getbasetemp() / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("VOS_CACHE", str(tmp_path_factory.getbasetemp() / "vos_cache"))
