# syntax=docker/dockerfile:1
#
# One image for all five Flywheel services. The entrypoint is `flywheel service`, so the
# container's command picks the service:
#
#   docker build -t flywheel .
#   docker run --rm -p 8000:8000 -e GATEWAY_HOST=0.0.0.0 flywheel gateway
#
# compose.yaml runs every service (and Kafka, Redis, MLflow, Prometheus, Grafana) from it.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtual environment with Flywheel and its pinned dependencies ---------------------
FROM ${PYTHON_IMAGE} AS build

# constraints.txt pins torch's CUDA build, whose nvidia-* and triton wheels add several GB.
# The services train and score on CPU, so torch is installed first, at the version
# constraints.txt pins, from this index; `pip install -c constraints.txt .` below then finds
# torch already satisfied (`torch==X` matches `X+cpu`) and never pulls the CUDA wheels.
# For a CUDA image: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

COPY constraints.txt ./
# --no-deps: torch's own dependencies (sympy, networkx, …) come from PyPI in the next step,
# at the versions constraints.txt pins.
RUN --mount=type=cache,target=/root/.cache/pip \
    torch_version="$(sed -n 's/^torch==//p' constraints.txt)" \
    && test -n "${torch_version}" \
    && pip install --index-url "${TORCH_INDEX_URL}" --no-deps "torch==${torch_version}"

# Dependencies first, against empty packages, so editing the code does not reinstall them.
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    mkdir -p flywheel shared services \
    && touch flywheel/__init__.py shared/__init__.py services/__init__.py \
    && pip install -c constraints.txt . \
    && rm -rf flywheel shared services build ./*.egg-info

# Then the code itself (dependencies are already in place).
COPY shared/ shared/
COPY services/ services/
COPY flywheel/ flywheel/
RUN pip install --no-cache-dir --no-deps --force-reinstall -c constraints.txt . \
    && flywheel --help > /dev/null

# --- runtime: the virtual environment, a non-root user, nothing else --------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    FLYWHEEL_DATA_DIR=/data

# /data is created owned by the service user so a named volume mounted there starts writable.
RUN groupadd --system --gid 10001 flywheel \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/flywheel \
        --shell /usr/sbin/nologin flywheel \
    && mkdir -p /data \
    && chown 10001:10001 /data

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /home/flywheel

# gateway, router, registry, trainer, monitor (shared/settings.py SERVICE_PORTS).
EXPOSE 8000 8001 8002 8003 8004

# Health checks live in compose.yaml: each service listens on its own port.
ENTRYPOINT ["flywheel", "service"]
CMD ["--help"]
