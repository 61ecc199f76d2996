# Image for the orchestrator and device agents (CPU-only torch).
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY edgeci_mqtt ./edgeci_mqtt
RUN pip install --no-cache-dir .
ENV OMP_NUM_THREADS=1
ENTRYPOINT []
CMD ["edgeci", "--help"]
