# The gateway image: `docker build -t gateway .`, then see docker-compose.yml for a demo stack.
# Config, signing keys and data (users file, SQLite store) live on volumes, never in the image.

FROM python:3.12-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# only what the package is built from (.dockerignore keeps everything else out of the context)
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# pip compiles the bytecode here: the running container's root filesystem may be read-only
RUN python -m venv /opt/gateway && /opt/gateway/bin/pip install .

FROM python:3.12-slim-bookworm
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_CONFIG=/etc/gateway/gateway.toml
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /var/lib/gateway --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/gateway /var/lib/gateway/keys /var/lib/gateway/data \
    && chown -R gateway:gateway /var/lib/gateway \
    && chmod 0700 /var/lib/gateway/keys
COPY --from=build /opt/gateway /opt/gateway
USER gateway:gateway
WORKDIR /var/lib/gateway
# the config (mount read-only), the signing keys, the users file and the SQLite store
VOLUME ["/etc/gateway", "/var/lib/gateway/keys", "/var/lib/gateway/data"]
EXPOSE 8000
# liveness from inside the container: GET {auth.prefix}/health on the configured listen port
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-m", "gateway.healthcheck"]
# exec form: the gateway is PID 1 and receives SIGTERM itself (graceful shutdown)
ENTRYPOINT ["gateway"]
CMD ["run"]
