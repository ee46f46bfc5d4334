# kestrelpy in a container:
#   docker build -t kestrelpy .
#   docker run --rm -p 8080:8080 kestrelpy
# Serve your own app by copying it in and changing CMD (keep the exec form: see below).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# A venv works on the official python images and on Debian's python3 alike (PEP 668 blocks system installs).
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kestrelpy ./kestrelpy
RUN pip install . && rm -rf /src

RUN groupadd --gid 10001 kestrelpy \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin kestrelpy
WORKDIR /app
COPY examples ./examples
USER 10001:10001

# Non-root processes cannot bind below 1024 in many container runtimes: listen on 8080.
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
STOPSIGNAL SIGTERM

# Exec form: kestrelpy is PID 1 and receives SIGTERM itself, so `docker stop` drains gracefully.
# (A shell-form CMD would put /bin/sh in front, which ignores SIGTERM: 10 s later comes SIGKILL.)
CMD ["kestrelpy", "examples.hello:app", "--host", "0.0.0.0", "--port", "8080"]
