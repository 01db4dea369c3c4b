# One Dockerfile for every binary of the workspace.
#
#   docker build --target webhook-gateway -t whatsapp-clone-webhook-gateway .
#   docker build --target processor       -t whatsapp-clone-processor .
#   docker build --target api-gateway     -t whatsapp-clone-api-gateway .
#   docker build                          -t whatsapp-clone .   # all-in-one: the LAST stage
#
# `whatsapp-clone` (the all-in-one binary) is deliberately the last stage, so
# builders that cannot pick a target (Render) build it by default.
#
# Stages: chef (cargo-chef on Rust >= 1.94) -> planner (recipe of the
# dependencies) -> builder (dependencies cooked in their own cached layer, then
# the four release binaries) -> runtime (debian:bookworm-slim, uid 10001) ->
# one small target per binary.
#
# Only classic Dockerfile features are used (no cache mounts, no heredocs), so
# the legacy builder (docker-compose 1.29) and BuildKit both build it.

# The builder must use the same Debian release as the runtime image (glibc):
# `latest-rust-1` may follow a newer Debian than bookworm.
ARG CHEF_IMAGE=lukemathwalker/cargo-chef:latest-rust-1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${CHEF_IMAGE} AS chef
WORKDIR /app

# ---------------------------------------------------------------------------
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ---------------------------------------------------------------------------
FROM chef AS builder
# Dependencies first: this layer is reused until Cargo.toml / Cargo.lock change.
# Same binaries (hence the same feature set) as the real build below.
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json \
        --bin webhook-gateway --bin processor --bin api-gateway --bin whatsapp-clone
COPY . .
RUN cargo build --release --locked \
        --bin webhook-gateway --bin processor --bin api-gateway --bin whatsapp-clone

# ---------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin app
# Every binary stops gracefully on SIGTERM (in-flight requests and batches finish).
STOPSIGNAL SIGTERM
# GET /healthz on $PORT with nothing but bash (no curl in the image).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD bash -c 'exec 3<>"/dev/tcp/127.0.0.1/${PORT}" && printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && IFS= read -r status <&3 && [[ "$status" == *" 200 "* ]]'
USER 10001:10001

# ---------------------------------------------------------------------------
FROM runtime AS webhook-gateway
COPY --from=builder /app/target/release/webhook-gateway /usr/local/bin/webhook-gateway
ENV PORT=3001
EXPOSE 3001
ENTRYPOINT ["webhook-gateway"]

# ---------------------------------------------------------------------------
FROM runtime AS processor
COPY --from=builder /app/target/release/processor /usr/local/bin/processor
# Health and metrics only.
ENV PORT=3002
EXPOSE 3002
ENTRYPOINT ["processor"]

# ---------------------------------------------------------------------------
FROM runtime AS api-gateway
COPY --from=builder /app/target/release/api-gateway /usr/local/bin/api-gateway
ENV PORT=3000
EXPOSE 3000
ENTRYPOINT ["api-gateway"]

# ---------------------------------------------------------------------------
# The all-in-one binary; keep this stage LAST (the default target).
# Embedded SQLite store and queue under /data unless NATS_URL / MONGODB_URI
# are set. `docker run IMAGE import /files --url ...` runs the importer.
FROM runtime AS whatsapp-clone
USER root
RUN mkdir -p /data && chown 10001:10001 /data
USER 10001:10001
COPY --from=builder /app/target/release/whatsapp-clone /usr/local/bin/whatsapp-clone
# A container is reached from outside it: every address (which needs
# API_TOKENS, or ALLOW_ANONYMOUS=true, at run time).
ENV PORT=3000 \
    HOST=0.0.0.0 \
    DATA_DIR=/data
WORKDIR /data
VOLUME /data
EXPOSE 3000
ENTRYPOINT ["whatsapp-clone"]
CMD ["serve"]
