# The kernelagent server. Its session kernels run in containers of the kernel image
# (kernel_images/python/Dockerfile), started through the Docker socket: see compose.yaml.
#
#   docker build -t kernelagent/server .
#
# BASE is any Debian-like image: the public python:3.12-slim, or a local Debian made with
# debootstrap where no registry is reachable (`make docker`).
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update -qq && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python3 python3-venv ca-certificates && \
        rm -rf /var/lib/apt/lists/*; \
    fi
COPY deploy/certs/ /tmp/certs/
# The dependencies first, from pyproject.toml alone: this layer stays cached while the code changes.
COPY pyproject.toml README.md /src/
RUN mkdir -p /src/kernelagent /src/templates /src/static /src/kernel_images && \
    echo '__version__ = "0"' > /src/kernelagent/__init__.py && \
    if [ -f /tmp/certs/ca.crt ]; then export PIP_CERT=/tmp/certs/ca.crt; fi && \
    python3 -m venv /opt/kernelagent && \
    /opt/kernelagent/bin/pip install --quiet --no-cache-dir /src
COPY kernelagent/ /src/kernelagent/
COPY templates/ /src/templates/
COPY static/ /src/static/
COPY kernel_images/ /src/kernel_images/
RUN if [ -f /tmp/certs/ca.crt ]; then export PIP_CERT=/tmp/certs/ca.crt; fi && \
    /opt/kernelagent/bin/pip install --quiet --no-cache-dir --no-deps --force-reinstall /src && \
    /opt/kernelagent/bin/pip uninstall --quiet -y pip && \
    chmod -R a+rX /opt/kernelagent

FROM ${BASE}
RUN if ! command -v python3 >/dev/null; then \
        apt-get update -qq && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 && \
        rm -rf /var/lib/apt/lists/* /var/cache/apt/*; \
    fi && \
    groupadd --gid 10001 kernelagent && \
    useradd --uid 10001 --gid 10001 --home-dir /var/lib/kernelagent --no-create-home \
        --shell /usr/sbin/nologin kernelagent && \
    mkdir -p /var/lib/kernelagent && chown kernelagent:kernelagent /var/lib/kernelagent
COPY --from=build /opt/kernelagent /opt/kernelagent
COPY deploy/server-entrypoint.sh /usr/local/bin/kernelagent-entrypoint
ENV PATH=/opt/kernelagent/bin:/usr/local/bin:/usr/bin:/bin \
    LANG=C.UTF-8 \
    KERNELAGENT_SANDBOX=docker \
    KERNELAGENT_DATA_DIR=/var/lib/kernelagent \
    KERNELAGENT_RUNTIME_DIR=/var/lib/kernelagent/run \
    KERNELAGENT_PORT=8888
EXPOSE 8888
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD \
    python3 -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"KERNELAGENT_PORT\"]}/api/v1/health', timeout=2)"
# Starts as root only to give the data directory to uid 10001 and to join the Docker socket's
# group; the server itself runs as 10001 (or as whatever --user says).
ENTRYPOINT ["/usr/local/bin/kernelagent-entrypoint"]
CMD ["kernelagent", "serve", "--host", "0.0.0.0"]
