# Stand-in for compose's postgres image in `make docker-test` only: Debian's PostgreSQL 15 on
# the stand-in base, with an entrypoint honouring the official image's POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_DB and PGDATA and its `postgres ARGS...` command form.
ARG BASE=python:3.12.12-slim-bookworm
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
