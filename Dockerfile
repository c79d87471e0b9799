# fashionclf serve in a container: CPU-only torch, a non-root user, a health check.
#   docker build -t fashionclf .                        (or: podman build -t fashionclf .)
#   docker run -p 8000:8000 -v "$PWD/runs/shop:/model:ro" -e FASHIONCLF_API_KEY=change-me fashionclf
# The run folder is mounted read-only at /model. To bake one in, add `COPY runs/shop /model` below.
# BASE: any Debian-like image with python3 and its venv module. `make container-check` builds one from the Debian
# archive with mmdebstrap (no registry needed) and passes it here (tools/container_check.py).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

# The CPU build of torch (~200 MB) instead of the default CUDA build (~5 GB): the service runs on CPUs.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Where pip looks besides PyPI (a local mirror, mounted into the build); unset: PyPI alone.
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
# A CA bundle for a TLS-inspecting proxy, mounted into the build; unset: the image's own.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /app
# A virtual environment: Debian's own python3 refuses installs into the system (PEP 668).
RUN python3 -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX}" torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY fashionclf ./fashionclf
# The project itself, from this folder; its own dependencies are pinned or ranged in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[serve,export]" \
    && useradd --create-home --uid 10001 fashionclf

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]
# 0.0.0.0 inside the container: the runtime publishes the port; set FASHIONCLF_API_KEY to require a key.
CMD ["fashionclf", "serve", "/model", "--host", "0.0.0.0", "--port", "8000"]
