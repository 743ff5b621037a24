# syntax=docker/dockerfile:1
# One image for both roles: `flatmtl serve` (the API, the default command) and `flatmtl worker`
# (claims jobs and runs them on Ray).
#
#   CPU (default): docker build -t flatmtl:latest .
#   CUDA:          docker build -t flatmtl:cuda --build-arg VARIANT=cuda \
#                    --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 .
#
# The CPU image pins torch through constraints-cpu.txt (as scripts/bootstrap.sh does); PIP_INDEX_URL
# and PIP_EXTRA_INDEX_URL pass through to pip for a mirror or a CPU-only wheel index.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# CUDA bases ship no Python: take the distribution's, which must be 3.11 or newer.
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -c 'import sys; assert sys.version_info >= (3, 11), f"FlatMTL needs Python 3.11+, found {sys.version}"'

FROM base AS build
ARG VARIANT=cpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
RUN python3 -m venv /opt/flatmtl
WORKDIR /app
COPY pyproject.toml constraints-cpu.txt README.md ./
COPY api ./api
COPY service ./service
COPY workers ./workers
# Editable, so the package's data files (Alembic migrations, the method catalog) are used in place.
RUN case "$VARIANT" in \
        cpu) constraints="--constraint constraints-cpu.txt" ;; \
        cuda) constraints="" ;; \
        *) echo "VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && /opt/flatmtl/bin/pip install --no-cache-dir $constraints --editable ".[service,deepspeed,datasets,tables,ray]" \
    && /opt/flatmtl/bin/python -c "import flatmtl.service.telemetry, flatmtl.api.app"

FROM base AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="flatmtl" \
      org.opencontainers.image.description="FlatMTL API and worker (${VARIANT})"
# Login shells (KubeRay starts Ray through `bash -l`) reset PATH from /etc/profile: add the venv there too.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin flatmtl \
    && mkdir -p /data \
    && chown flatmtl:flatmtl /data \
    && echo 'export PATH=/opt/flatmtl/bin:$PATH' > /etc/profile.d/flatmtl.sh
COPY --from=build /opt/flatmtl /opt/flatmtl
COPY --from=build /app /app
WORKDIR /app
ENV PATH=/opt/flatmtl/bin:$PATH \
    FLATMTL_DATA_DIR=/data \
    FLATMTL_API_HOST=0.0.0.0 \
    FLATMTL_API_PORT=8000 \
    FLATMTL_HEALTHCHECK_URL=http://127.0.0.1:8000/healthz
USER flatmtl
VOLUME ["/data"]
EXPOSE 8000
# The API's liveness. Worker containers override or disable it (docker-compose.yml): their health
# is their jobs' heartbeats, which Prometheus alerts on.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['FLATMTL_HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["flatmtl"]
CMD ["serve"]
