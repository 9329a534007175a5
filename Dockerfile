# syntax=docker/dockerfile:1
#
# minichat-server in a container.
#
#   docker build -t minichat-server .
#   docker run --rm -p 8000:8000 minichat-server            # in-memory, auth on
#   docker run --rm minichat-server --help                  # every flag
#
# Configuration is the environment of API.md "Configuration" (DATABASE_URL, REDIS_URL,
# MINICHAT_AUTH, MINICHAT_JWT_SECRET, ...); docker-compose.yml runs two nodes on PostgreSQL and
# Redis.

# --- build ---------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# The whole workspace (see .dockerignore): cargo reads every member's manifest, and the server
# embeds files from minichat-server/assets and the core's migrations at compile time.
COPY . .

# Cache mounts keep the registry and the build between image builds; the binary is copied out of
# the target cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release -p minichat-server --locked \
    && install -D -m 0755 target/release/minichat-server /out/minichat-server

# --- run -----------------------------------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 minichat \
    && useradd --system --uid 10001 --gid minichat --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin minichat

COPY --from=builder /out/minichat-server /usr/local/bin/minichat-server

USER minichat:minichat
ENV MINICHAT_BIND=0.0.0.0:8000
EXPOSE 8000

ENTRYPOINT ["minichat-server"]
