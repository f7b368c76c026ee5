# syntax=docker/dockerfile:1
# infermesh scheduler image. The scheduler handles token ids only: this image installs neither
# torch nor tokenizers nor transformers (tests/deploy/test_dockerfiles.py checks the list).
# Build from the repository root:
#   docker build -f deploy/docker/scheduler.Dockerfile -t infermesh/scheduler .
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/infermesh

COPY protos/ protos/
COPY scripts/gen_protos.py scripts/gen_protos.py
COPY shared/ shared/
COPY services/scheduler/ services/scheduler/

# grpcio-tools only generates the stubs and leaves again.
RUN pip install grpcio-tools \
 && python scripts/gen_protos.py \
 && pip install ./shared ./services/scheduler \
 && pip uninstall -y grpcio-tools \
 && useradd --system --no-create-home infermesh

USER infermesh
# gRPC (frontends and workers), Prometheus /metrics.
EXPOSE 50051 9101
# The compose file and the k8s manifests give the whole command line.
CMD ["infermesh-scheduler", "--host", "0.0.0.0", "--port", "50051", "--model-path", "/models/model"]
