"""The application several e2e files share (tests/e2e/shared_app.py): started by the first test that needs it,
deleted after the last; those files run one after another."""

from __future__ import annotations

import pytest

from tests.e2e import shared_app as shared

SHARED_FIXTURE = "shared_app"
_last_user: list[str] = []  # the node id of the last test that uses the shared app
_state = {"running": False, "deleted": False}


def pytest_collection_modifyitems(session, config, items):
    """The files whose tests use the shared app move up to the first of them (in their own order), so the app's
    engines are not held while other files start theirs."""
    users = [item for item in items if SHARED_FIXTURE in item.fixturenames]
    if not users:
        return
    files = {item.path for item in users}
    moved = [item for item in items if item.path in files]
    first = items.index(moved[0])
    rest = [item for item in items if item.path not in files]
    items[:] = rest[:first] + moved + rest[first:]
    _last_user[:] = [next(item for item in reversed(moved) if SHARED_FIXTURE in item.fixturenames).nodeid]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    if [item.nodeid] == _last_user:
        _delete_shared_app()
    return result


def _delete_shared_app() -> None:
    from ray import serve

    if _state["running"]:
        serve.delete(shared.NAME)
        _state.update(running=False, deleted=True)


@pytest.fixture(scope="session")
def shared_checkpoints(tmp_path_factory):
    from tests.tiny_cross_encoder import (
        build_tiny_cross_encoder,
        build_tiny_modernbert_cross_encoder,
        build_tiny_xlmr_cross_encoder,
    )
    from tests.tiny_qwen3 import build_tiny_qwen3

    return {
        "cross_encoder": build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder")),
        # XLM-RoBERTa (bge-reranker's architecture), saved by transformers 5: no position_embedding_type in its
        # config, so vLLM takes the position table's 130 for its length where sentence-transformers cuts to 128
        "xlmr_cross_encoder": build_tiny_xlmr_cross_encoder(tmp_path_factory.mktemp("tiny-xlmr-cross-encoder")),
        # ModernBERT (gte-reranker-modernbert's): rotary positions, local attention, pairs of up to 256 tokens
        "modernbert_cross_encoder": build_tiny_modernbert_cross_encoder(tmp_path_factory.mktemp("tiny-modernbert")),
        "generative": build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3")),
    }


@pytest.fixture(scope="session")
def shared_app(serve_instance, shared_checkpoints):
    """(base URL, ingress handle) of the shared application."""
    from ray import serve

    from deployments.app import build_app

    assert not _state["deleted"], "the shared app was deleted: its files must run one after another"
    handle = serve.run(build_app(shared.shared_app_args(shared_checkpoints)), name=shared.NAME,
                       route_prefix=shared.ROUTE)
    _state["running"] = True
    yield f"{serve_instance}{shared.ROUTE}", handle
    _delete_shared_app()
