# syntax=docker/dockerfile:1
#
# hazard-cascade image: the project installed on a pinned Ray base. One image serves the
# RayService (serve.app:build_app) and runs the RayJobs (python -m ray_jobs.<job>).
#
#   CPU (default):  docker build -t ghcr.io/hazard-cascade/hazard-cascade:0.1.0 .
#   GPU (vLLM):     docker build -t ghcr.io/hazard-cascade/hazard-cascade:0.1.0-gpu \
#                     --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   (`-gpu` is Ray's alias for its default CUDA build; a `-cu1xx` tag pins the CUDA version.)
#
# Pin the base by digest for releases: --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu@sha256:...
# No secrets are baked in: API key and S3 credentials reach the pods from Kubernetes Secrets.
# No HEALTHCHECK: KubeRay injects the readiness/liveness probes.

ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu
FROM ${RAY_IMAGE}

# Where torch/torchvision come from. The CPU default keeps the image small; an empty value uses
# PyPI's default (CUDA) wheels.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG APP_VERSION=0.1.0

LABEL org.opencontainers.image.title="hazard-cascade" \
      org.opencontainers.image.description="Corridor fire-hazard scoring with a Qwen2.5-VL cascade on Ray" \
      org.opencontainers.image.version="${APP_VERSION}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The Ray image's unprivileged user: uid 1000 (`ray`), gid 100 (`users`). Numeric, so that
# Kubernetes can verify runAsNonRoot.
USER 1000:100
# Created by the ray user (WORKDIR alone may create it root-owned; pip builds in the tree).
RUN mkdir -p /home/ray/app
WORKDIR /home/ray/app

# torch + torchvision first and pinned (a bare `torch` requirement pulls a newer build).
RUN if [ -n "${TORCH_INDEX_URL}" ]; then \
        pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.14.1 torchvision==0.29.1; \
    else \
        pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1; \
    fi

# Project metadata, then the packages and configs. Job entrypoints take config paths relative
# to this directory (e.g. `--config configs/stage1_base_7b.yaml`), which is the working
# directory of `ray start` and so of the Ray job driver.
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 hazard/ hazard/
COPY --chown=1000:100 pipelines/ pipelines/
COPY --chown=1000:100 ray_jobs/ ray_jobs/
COPY --chown=1000:100 serve/ serve/
COPY --chown=1000:100 configs/ configs/

RUN pip install --no-cache-dir . \
    && python -c "import hazard, pipelines, ray_jobs, serve.app" \
    && rm -rf build *.egg-info
