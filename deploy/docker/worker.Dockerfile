# syntax=docker/dockerfile:1
# infermesh worker image: torch, safetensors and the model code.
# Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t infermesh/worker .
# For a CPU-only image pass the PyTorch CPU wheel index:
#   --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index URL>
FROM python:3.12-slim

ARG TORCH_VERSION=""
ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/infermesh

# torch first and on its own, so the index choice above decides which build is installed.
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch${TORCH_VERSION:+==$TORCH_VERSION}"

COPY protos/ protos/
COPY scripts/gen_protos.py scripts/gen_protos.py
COPY shared/ shared/
COPY services/worker/ services/worker/

RUN pip install grpcio-tools \
 && python scripts/gen_protos.py \
 && pip install ./shared ./services/worker \
 && pip uninstall -y grpcio-tools \
 && useradd --system --no-create-home infermesh

USER infermesh
# gRPC (the scheduler drives it), Prometheus /metrics; torch.distributed uses the port the
# scheduler assigns.
EXPOSE 50061 9102
# The compose file and the k8s manifests give the whole command line.
CMD ["infermesh-worker", "--host", "0.0.0.0", "--port", "50061"]
