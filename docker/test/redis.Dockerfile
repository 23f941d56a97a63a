# Stand-in for compose's redis image in `make docker-test` only (no registry here): Debian's
# redis-server on the stand-in base. The real stack pulls the image compose.yaml names.
ARG BASE=python:3.12.12-slim-bookworm
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o redis -g redis /data
WORKDIR /data
USER redis
CMD ["redis-server"]
