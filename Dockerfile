# registry-consumer image: `docker build -t registry-consumer .` (docker-compose.yml builds it for you).
# Runs as an unprivileged user; configuration comes from the environment (REGISTRY_CONSUMER_*) and, when
# REGISTRY_CONSUMER_CONFIG names one, a mounted YAML file.

# Build stage: a wheel of the project, so neither the sources nor pip's build tools end up in the image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY consumer ./consumer
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and file permissions on mounted
# secrets are predictable.
RUN groupadd --system --gid 10001 registry-consumer \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin registry-consumer
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels

USER 10001:10001
# Inside a container the service must listen on all interfaces (its own default is 127.0.0.1:8080).
ENV REGISTRY_CONSUMER_LISTEN=0.0.0.0:8080
EXPOSE 8080

# Ready = Redis answers and the service is not shutting down. Python's standard library only: the slim image
# has no curl. urlopen raises on a non-2xx answer, which exits non-zero. The port follows
# REGISTRY_CONSUMER_LISTEN.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('REGISTRY_CONSUMER_LISTEN', '0.0.0.0:8080').rpartition(':')[2]; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=3).status == 200 else 1)"]

# The config file is optional: set REGISTRY_CONSUMER_CONFIG=/etc/registry-consumer/consumer.yaml and mount
# it there (docker-compose.yml does). `serve` handles SIGTERM: in-flight requests finish, then it exits.
CMD ["registry-consumer", "serve"]
