# One image for every process kind; compose and Kubernetes pick the console script per process.
# tests/packaging/test_container.py replays these steps (or builds the image with podman).
ARG PYTHON_IMAGE=python:3.11-slim

# The wheel, built from the source like any other: setup.py generates the gRPC stubs into it,
# with the build requirements of pyproject.toml (grpcio-tools, googleapis-common-protos).
FROM ${PYTHON_IMAGE} AS build
RUN pip install --no-cache-dir "build>=1.2,<2"
WORKDIR /src
COPY . .
RUN python -m build --wheel --outdir /wheels

FROM ${PYTHON_IMAGE}
# The unprivileged user, and the artifacts directory it owns: a fresh named volume mounted at
# /data/artifacts (docker-compose.yml) takes this owner.
RUN useradd --system --uid 10001 --home-dir /data --no-create-home aias \
    && mkdir -p /data/artifacts \
    && chown -R aias:aias /data
# The pinned dependencies in their own layer, before the code: a change of code reuses it.
# `make lock` keeps requirements.lock current.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock
COPY --from=build /wheels /wheels
# Every process runs without docstrings and asserts (PYTHONOPTIMIZE=2, below: about 4 MiB less
# each); the user below cannot write .pyc files, so the ones that level reads are compiled here.
RUN pip install --no-cache-dir --no-deps /wheels/*.whl \
    && rm -rf /wheels \
    && pip check \
    && python -OO -m aias.core.precompile
USER aias
WORKDIR /data
ENV AIAS_DATA_DIR=/data AIAS_ARTIFACTS_DIR=/data/artifacts PYTHONUNBUFFERED=1 PYTHONOPTIMIZE=2 \
    GRPC_ENABLE_FORK_SUPPORT=false
# The gateway's HTTP (its /metrics too); each gRPC port (tenancy 50051, execution 50052,
# artifacts 50053, billing 50054, execution-worker 50055, execution-alerts 50056) and each
# of these processes' metrics port (9101-9106), as in aias/core/launcher.py.
EXPOSE 8080 50051 50052 50053 50054 50055 50056 9101 9102 9103 9104 9105 9106
CMD ["aias-gateway"]
