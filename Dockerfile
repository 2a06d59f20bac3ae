# warmroute: one image, two processes.
#   docker run IMAGE                                   -> python -m router --config /etc/warmroute
#   docker run IMAGE python -m preloader --config ...  -> the preloader (cluster or --sidecar mode)
# The config directory is mounted at /etc/warmroute (a Kubernetes ConfigMap; see k8s/).
#
# The runtime set is requirements/main.lock, the same pins the test environment installs
# (requirements/dev.lock is compiled with main.lock as a constraint). Only binary wheels are
# accepted, so neither stage needs a compiler.

# ---- builder: a venv with the locked dependencies and the project wheel ----------------------
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/warmroute

WORKDIR /src

# Dependencies first: this layer is reused until the lock changes.
COPY requirements/main.lock requirements/main.lock
RUN /opt/warmroute/bin/pip install --no-cache-dir --no-deps --only-binary=:all: \
        -r requirements/main.lock

# The project itself, as a wheel, without resolving anything again.
COPY pyproject.toml ./
COPY tenancy ./tenancy
COPY router ./router
COPY preloader ./preloader
RUN /opt/warmroute/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels . \
    && /opt/warmroute/bin/pip install --no-cache-dir --no-deps /tmp/wheels/warmroute-*.whl \
    && /opt/warmroute/bin/pip check

# ---- final: the venv on a clean slim base, as a non-root user --------------------------------
FROM python:3.11.14-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="warmroute" \
      org.opencontainers.image.description="Multi-tenant inference router and preloader for shared multi-model endpoints" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/warmroute/warmroute" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"

ENV PATH=/opt/warmroute/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WARMROUTE_CONFIG=/etc/warmroute

# A numeric UID/GID so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 warmroute \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin warmroute

COPY --from=builder /opt/warmroute /opt/warmroute

USER 10001:10001
# Root-owned and read-only for the user: `python -m` finds nothing here but the installed packages.
WORKDIR /opt/warmroute

# 8080: the router (WARMROUTE_PORT); 9090: the preloader (WARMROUTE_PRELOADER_PORT).
EXPOSE 8080 9090

# No curl in slim images: Python asks /healthz of whichever process this container runs (the
# router's port, else the preloader's), never through an HTTP proxy from the environment.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u\nopener = u.build_opener(u.ProxyHandler({}))\ndef ok(port):\n    try:\n        return opener.open(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200\n    except OSError:\n        return False\nports = (os.environ.get('WARMROUTE_PORT', '8080'), os.environ.get('WARMROUTE_PRELOADER_PORT', '9090'))\nraise SystemExit(0 if any(ok(p) for p in ports) else 1)"]

CMD ["python", "-m", "router", "--config", "/etc/warmroute"]
