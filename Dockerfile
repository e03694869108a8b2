# One image for the trainer, the worker and the alert tools.
# The PyPI torch wheel carries CUDA, so the same image serves the GPU profile.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY trainer ./trainer
RUN pip install . && useradd --create-home --uid 10001 app
USER app
EXPOSE 9108
CMD ["python", "-m", "pipeline", "run"]
