"""App fixtures: a fresh SQLite store per module, optionally filled with SYNTHETIC runs
(tests/app/synthetic.py), and clean app-side caches (they are keyed by run id)."""

from __future__ import annotations

import pytest

from tests.storehelpers import backend_env


def _clear_app_caches() -> None:
    from app import common, run_cache

    run_cache.forget()
    common._ONSET_CACHE.clear()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with backend_env("sqlite", tmp_path_factory.mktemp("app-store")) as url:
        _clear_app_caches()
        yield url
        _clear_app_caches()


@pytest.fixture(scope="module")
def ab_store(store):
    """An A/B pair (Flow-GRPO over-optimizes, Guard does not) of 60 steps with eval images,
    plus a failed run: all synthetic."""
    from tests.app import synthetic

    a, b = synthetic.make_ab_pair(60, eval_every=10, ckpt_every=30)
    failed = synthetic.make_run("flow_grpo", 5, name="broken", finish="failed", tags=("synthetic", "sweep"),
                                with_images=False)
    return {"flow": a, "guard": b, "failed": failed}
