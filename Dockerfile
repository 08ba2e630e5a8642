# PureEBM: one image for the API and the GPU workers.
# The pinned torch wheel is a CUDA build (its CUDA libraries come from PyPI), so
# workers use the GPU on hosts with the NVIDIA driver and container toolkit.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PUREEBM_DATA_DIR=/data PUREEBM_REGISTRY=/app/models
WORKDIR /app

COPY pyproject.toml constraints.txt README.md ./
COPY pureebm ./pureebm
COPY jobs ./jobs
COPY service ./service
COPY worker ./worker
RUN pip install -c constraints.txt ".[ddpm]"

COPY models ./models
RUN useradd --create-home --uid 1000 pureebm && mkdir -p /data && chown pureebm /data
USER pureebm

EXPOSE 8000
ENTRYPOINT ["pureebm"]
CMD ["serve", "--host", "0.0.0.0"]
