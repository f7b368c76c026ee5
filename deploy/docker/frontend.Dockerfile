# syntax=docker/dockerfile:1
# infermesh frontend image: tokenizer, detokenizer, routing over scheduler replicas. No torch.
# Build from the repository root:
#   docker build -f deploy/docker/frontend.Dockerfile -t infermesh/frontend .
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/infermesh

COPY protos/ protos/
COPY scripts/gen_protos.py scripts/gen_protos.py
COPY shared/ shared/
COPY services/frontend/ services/frontend/

RUN pip install grpcio-tools \
 && python scripts/gen_protos.py \
 && pip install ./shared ./services/frontend \
 && pip uninstall -y grpcio-tools \
 && useradd --system --no-create-home infermesh

USER infermesh
# gRPC API, OpenAI-compatible HTTP API, Prometheus /metrics.
EXPOSE 50050 8000 9100
# The compose file and the k8s manifests give the whole command line.
CMD ["infermesh-frontend", "--host", "0.0.0.0", "--port", "50050", "--model-path", "/models/model"]
