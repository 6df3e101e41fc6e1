# syntax=docker/dockerfile:1
# GRPO-Guard Studio, the slim image: the Gradio UI (`grpo-guard serve`), the migrator
# (`grpo-guard db upgrade`) and, as target `flower`, the Celery monitor. It installs the `ui`
# extra of the one pyproject.toml and never torch (the app must start in seconds).
#
#   docker build -f docker/Dockerfile.app -t grpo-guard-app .
#
# No secrets here: GG_AUTH, database and broker passwords and HF_TOKEN are given at run time
# (docker-compose.yml reads them from .env).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- the project wheel (built once, installed with --no-deps below) -------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY grpo_guard ./grpo_guard
COPY worker ./worker
COPY app ./app
# app/presets/*.yaml are symlinks into examples/; the wheel copies their targets
COPY examples ./examples
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- runtime base: dependencies of core + `ui`, a non-root user, writable volume roots ------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    GG_DATA_DIR=/data \
    GG_ARTIFACTS=/artifacts
# The non-root user: uid/gid 1000 (a host directory mounted as ARTIFACTS_PATH must be writable
# by it). The volume roots are created here so that named volumes start out owned by it.
RUN groupadd --gid 1000 grpo \
 && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin grpo \
 && mkdir -p /data /artifacts \
 && chown 1000:1000 /data /artifacts
# Dependencies first, in a layer that changes only with pyproject.toml.
COPY pyproject.toml docker/requirements.py /tmp/build/
RUN python /tmp/build/requirements.py /tmp/build/pyproject.toml ui > /tmp/build/requirements.txt \
 && pip install -r /tmp/build/requirements.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels /tmp/build \
 && pip check \
 && python -c "import importlib.util as u, sys; sys.exit('torch must not be in the app image' if u.find_spec('torch') else 0)" \
 && GG_DATA_DIR=/tmp/import-check python -c "import app.main, worker.celery_app, grpo_guard.store.db" \
 && rm -rf /tmp/import-check \
 && grpo-guard --version
WORKDIR /data
USER 1000:1000
EXPOSE 7860

# ---- flower (docker compose --profile flower) -----------------------------------------------
FROM runtime AS flower
USER 0
RUN pip install "flower>=2"
USER 1000:1000
EXPOSE 5555
CMD ["celery", "flower", "--port=5555"]

# ---- the app (default target) ---------------------------------------------------------------
FROM runtime AS app
USER 1000:1000
CMD ["grpo-guard", "serve", "--host", "0.0.0.0", "--port", "7860", "--no-worker"]
