# syntax=docker/dockerfile:1
#
# The `approvals` image: a release build in a pinned Rust image, run from a small Debian image
# as a non-root user.
#
#   docker build -t approvals:0.1.0 .
#   docker build -t approvals-worker:0.1.0 --build-arg FEATURES=temporal --target worker .
#
# The last stage (`runtime`, the default target) runs `approvals serve`; `worker` runs
# `approvals worker`, listening and health-checked where the worker serves (worker.listen).
#
# docker compose passes FEATURES from APPROVALS_FEATURES (README, "Temporal backend").
#
# The runtime image holds the binary, the default policy bundle (/opt/approvals/policies) and
# curl for operators (the health check is the binary's own). Configuration: APPROVALS_CONFIG
# (or `approvals serve --config FILE`) plus APPROVALS_<SECTION>__<KEY> variables (README.md, "Configuration"); tokens belong in the
# mounted config file, never in the image.

# ---- build ---------------------------------------------------------------------------------
FROM rust:1.95.0-slim-bookworm AS build

# Cargo features to build with, space- or comma-separated ("temporal" for the worker image).
ARG FEATURES=""

# No protoc needed for "temporal": the Temporal client is built with its `vendored-protox`
# feature (a pure-Rust protobuf compiler; backends/temporal/Cargo.toml).

WORKDIR /src
# The whole workspace (every member's manifest is needed); .dockerignore keeps target/, .git,
# local state and the operator's deploy/ secrets out of the context.
COPY . .

# The registry and target/ live in BuildKit cache mounts, so the binary is copied out of
# target/ inside the same step. The release profile keeps line tables (a ~100 MB binary); the
# image keeps the symbols only (~19 MB), enough for function names in backtraces.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    set -eux; \
    cargo build --release --locked -p approvals ${FEATURES:+--features "$FEATURES"}; \
    install -D -m 0755 target/release/approvals /out/approvals; \
    strip --strip-debug /out/approvals

# ---- base: what both runtime images hold -------------------------------------------------
# Same Debian release as the builder (glibc), pinned by point release.
FROM debian:12.11-slim AS base

# curl: for operators in the container (the runbook reads /metrics with it); ca-certificates:
# for curl and other tools run in the container (the service carries its own roots; its Redis
# client speaks no TLS).
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 approvals; \
    useradd --system --uid 10001 --gid approvals --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin approvals

COPY --from=build /out/approvals /usr/local/bin/approvals
COPY policies/ /opt/approvals/policies/

WORKDIR /opt/approvals
# Environment variables override the config file: a mounted file's policy.dir or log.format
# (or listen addresses, below) needs the variable set too (the service logs each key so
# overridden at start).
ENV APPROVALS_POLICY__DIR=/opt/approvals/policies \
    APPROVALS_LOG__FORMAT=json
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/approvals"]

# ---- worker: `approvals worker` (build with FEATURES=temporal and --target worker) --------
FROM base AS worker
# Its /healthz, /readyz and /metrics, on all interfaces inside a container (the default,
# 127.0.0.1, is unreachable from Prometheus and the orchestrator's probes).
ENV APPROVALS_WORKER__LISTEN=0.0.0.0:8081
EXPOSE 8081
# `--worker`: /readyz on worker.listen. The plain probe asks `serve`'s port, where a worker
# serves nothing: the image was unhealthy for ever.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["approvals", "healthcheck", "--worker"]
CMD ["worker"]

# ---- runtime: `approvals serve` (the default target) --------------------------------------
FROM base AS runtime
# Inside a container the API must listen on all interfaces (the default is 127.0.0.1).
# /metrics names every tenant and what it does: on a port of its own, which Prometheus reaches
# and the API's clients do not (publish 8080 only).
ENV APPROVALS_SERVER__LISTEN=0.0.0.0:8080 \
    APPROVALS_SERVER__METRICS_LISTEN=0.0.0.0:8090
EXPOSE 8080 8090

# Ready means: the HTTP API answers and the backend (Redis) is reachable. `approvals
# healthcheck` asks /readyz where the configuration says the service listens (server.listen,
# from APPROVALS_CONFIG's file and the environment; `--worker`: worker.listen). Give the
# config file as APPROVALS_CONFIG rather than `--config` so that the probe reads it too.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["approvals", "healthcheck"]
CMD ["serve"]
