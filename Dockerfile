# One image for every process kind; the compose file picks the entry point per service.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY aias aias
COPY services services
COPY gateway gateway
# Generate the stubs into the source tree, then install it (stubs included) as a regular package.
RUN pip install --no-cache-dir "grpcio-tools>=1.85,<2" "mypy-protobuf>=3.6" \
    && pip install --no-cache-dir --no-deps -e . \
    && python -m aias.core.protogen \
    && pip uninstall -y aias \
    && pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home aias && mkdir -p /data && chown aias /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER aias
ENV AIAS_DATA_DIR=/data PYTHONUNBUFFERED=1
EXPOSE 8080 50051 50052 50053 50054
CMD ["aias-gateway"]
