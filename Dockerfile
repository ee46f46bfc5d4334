# kestrelpy in a container: `docker build -t kestrelpy .` then `docker run -p 8080:8080 kestrelpy`.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# A venv works on the official images and on Debian's python3 alike (PEP 668 blocks system installs).
RUN python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY kestrelpy ./kestrelpy
RUN pip install --no-cache-dir . && rm -rf /app/kestrelpy /app/pyproject.toml
COPY examples ./examples

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin kestrelpy
USER 10001

EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python3", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/', timeout=2).status >= 500)"]

# Exec form, so SIGTERM reaches kestrelpy as PID 1 and triggers a graceful shutdown.
CMD ["kestrelpy", "examples.hello:app", "--host", "0.0.0.0", "--port", "8080"]
