# syntax=docker/dockerfile:1
#
# hazard-cascade image: the project on a pinned Ray base, installed from a resolved lock file.
# One image serves the RayService (serve.app:build_app) and runs the RayJobs
# (python -m ray_jobs.<job>).
#
#   GPU, production (default): Ray's CUDA 13 image + vLLM, from docker/requirements-gpu.lock
#     docker build -t ghcr.io/hazard-cascade/hazard-cascade:0.1.0 .
#   CPU (demos, CI-like clusters): Ray's CPU image, from docker/requirements-cpu.lock
#     docker build --build-arg VARIANT=cpu -t ghcr.io/hazard-cascade/hazard-cascade:0.1.0-cpu .
#
# The two locks differ on purpose: vLLM 0.33.0 pins torch 2.14.0 / torchvision 0.29.0 (CUDA 13
# builds) and transformers < 5.21, where the project pins torch 2.14.1. Each lock is resolved by
# scripts/lock_images.py and checked by tests/integration/test_images.py; the project itself is
# installed with --no-deps on top of it.
# Ray image tags: <ray>-py<python>-<platform>, platform `cpu` or `cu<major><minor>` (cu130 = CUDA
# 13.0; nodes need an NVIDIA driver for CUDA 13). For a release, pin each base by digest too:
#   --build-arg GPU_BASE=rayproject/ray:2.60.0-py311-cu130@sha256:...
# No secrets are baked in: the API key and S3 credentials reach the pods from Kubernetes
# Secrets. No HEALTHCHECK: KubeRay injects the readiness and liveness probes.

ARG VARIANT=gpu
ARG GPU_BASE=rayproject/ray:2.60.0-py311-cu130
ARG CPU_BASE=rayproject/ray:2.60.0-py311-cpu

FROM ${GPU_BASE} AS base-gpu
FROM ${CPU_BASE} AS base-cpu

# The stage of the chosen variant: a stage name (pinned above), so DL3006 does not apply.
# hadolint ignore=DL3006
FROM base-${VARIANT}
ARG VARIANT
ARG APP_VERSION=0.1.0

LABEL org.opencontainers.image.title="hazard-cascade" \
      org.opencontainers.image.description="Corridor fire-hazard scoring with a Qwen2.5-VL cascade on Ray (${VARIANT})" \
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

# Every third-party package, exactly as locked (--no-deps: nothing outside the lock).
COPY --chown=1000:100 docker/requirements-${VARIANT}.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --no-deps -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock

# The project, without dependencies (the lock has them). Job entrypoints take config paths
# relative to this directory (e.g. `--config configs/stage1_base_7b.yaml`), which is the working
# directory of `ray start` and so of the Ray job driver.
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 hazard/ hazard/
COPY --chown=1000:100 pipelines/ pipelines/
COPY --chown=1000:100 ray_jobs/ ray_jobs/
COPY --chown=1000:100 serve/ serve/
COPY --chown=1000:100 configs/ configs/

RUN pip install --no-cache-dir --no-deps . \
    && python -c "import hazard, pipelines, ray_jobs, serve.app" \
    && if [ "${VARIANT}" = gpu ]; then python -c "import vllm"; fi \
    && rm -rf build ./*.egg-info
