# Two targets from one file:
#   runtime (default): the worker, the trainer and the alert tools; the PyPI torch wheel carries
#     CUDA, so the same image serves the GPU profile. It leaves out pipeline/devstack (local
#     Kafka/Prometheus launchers, demo, sample data): nothing on the runtime path imports it.
#   devstack: runtime plus the dev stack, for compose's sample-data and producer services.
FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY pipeline ./pipeline
COPY trainer ./trainer
RUN rm -rf pipeline/devstack \
    && pip install -c constraints.txt --upgrade pip \
    && pip install -c constraints.txt --build-constraint constraints.txt . \
    && useradd --create-home --uid 10001 app
USER app
EXPOSE 9108
CMD ["python", "-m", "pipeline", "run"]

FROM runtime AS devstack
USER root
COPY pipeline/devstack ./pipeline/devstack
RUN pip install --no-deps --build-constraint constraints.txt .
USER app
