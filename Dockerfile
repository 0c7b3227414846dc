# syntax=docker/dockerfile:1.7
#
# One image for every Qunbuy process: the gateway, the three services, their worker
# Deployments and the migration Job. Kubernetes picks the process with `command:`;
# the default CMD runs the gateway. See docs/deploy.md.
#
#   docker build -t registry.example.com/qunbuy/qunbuy:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: resolve nothing, install exactly what uv.lock says into /app/.venv ----------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

# The same uv as the dev dependency group pins, so the lock file reads the same here.
RUN pip install uv==0.13.9

WORKDIR /src

# Dependencies first: this layer is rebuilt only when the lock file changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --no-install-project

# Then the project itself, installed as a wheel (not editable), so the runtime stage
# needs the virtualenv only. Migrations ship inside the packages.
COPY README.md ./
COPY shared ./shared
COPY gateway ./gateway
COPY services ./services
COPY qunbuy ./qunbuy
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

# --- runtime: the interpreter, the virtualenv, a non-root user -------------------------
FROM ${PYTHON_IMAGE} AS runtime

# A fixed numeric id: Kubernetes' runAsNonRoot can only verify a numeric USER, and the
# manifests' runAsUser/runAsGroup/fsGroup use the same number.
RUN groupadd --system --gid 10001 qunbuy \
 && useradd --system --uid 10001 --gid qunbuy --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin qunbuy

# Owned by root and so read-only for the process, which also runs with a read-only
# root filesystem in Kubernetes (bytecode is compiled at build time for that reason).
COPY --from=build /app/.venv /app/.venv

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp

WORKDIR /app
USER 10001:10001

# gateway, orders, crowdfund, referrals
EXPOSE 8000 8001 8002 8003

CMD ["uvicorn", "gateway.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--loop", "uvloop", "--http", "shared.server:CoalescingHttpToolsProtocol", "--no-access-log"]
