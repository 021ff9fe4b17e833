"""Shared pytest fixtures (one section per area; each section is owned by its module's author)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helpers: hub_server, multiprocess

# ---- hub (owner: helper "hub") -----------------------------------------------------------------
# The fake Hub runs once per session on 127.0.0.1 (port 0). huggingface_hub reads HF_ENDPOINT
# when it is imported, and by the time a fixture runs it usually is (timm and transformers
# import it), so `fake_hub` patches the imported module (constants.ENDPOINT,
# HUGGINGFACE_CO_URL_TEMPLATE and the module-level HfApi behind huggingface_hub.create_repo /
# model_info) and also sets HF_ENDPOINT for subprocesses; test_hub.py checks both paths.
from hub_server import FakeHub, point_huggingface_hub_at, restore_huggingface_hub  # noqa: E402

#: The user and write token the fake Hub knows (fake values, valid only for FakeHub).
HUB_USER = "hub-tester"
HUB_TOKEN = "hf_fake-hub-tester-write-token-0123"


@pytest.fixture(scope="session")
def hub_server() -> Iterator[FakeHub]:
    """The session's fake Hub server (state persists: use ``fake_hub`` in tests)."""
    server = FakeHub(tokens={HUB_TOKEN: HUB_USER}).start()
    yield server
    server.stop()


@pytest.fixture
def fake_hub(
    hub_server: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeHub]:
    """An empty fake Hub with huggingface_hub pointed at it, online, with a private cache.

    ``HF_TOKEN`` is set to :data:`HUB_TOKEN`; the user's token file and cache are never read.
    """
    import huggingface_hub.constants as constants

    hub_server.reset()
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(
        constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens")
    )
    for name, value in {
        "HF_HUB_CACHE": str(cache),
        "HF_TOKEN": HUB_TOKEN,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    old = point_huggingface_hub_at(hub_server.url)
    try:
        yield hub_server
    finally:
        restore_huggingface_hub(old)


# ---- end hub -----------------------------------------------------------------------------------
