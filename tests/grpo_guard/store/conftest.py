"""Store fixtures: every test module runs against a fresh SQLite file and a fresh PostgreSQL
schema on the server at 127.0.0.1:5432 (database ``test``), dropped afterwards."""

from __future__ import annotations

import pytest

from tests.storehelpers import backend_env


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request, tmp_path_factory):
    """Points GG_DATABASE_URL / GG_DATA_DIR / GG_ARTIFACTS at a fresh, upgraded store; yields the URL."""
    with backend_env(request.param, tmp_path_factory.mktemp(f"store-{request.param}")) as url:
        yield url
