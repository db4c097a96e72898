# syntax=docker/dockerfile:1
# The gateway image: `novastack serve --config` (no GPU backend).
# Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t ghcr.io/novastack/gateway:0.1.0 .

# Builder and runtime are both Debian 12 (bookworm), so the binary's glibc matches.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p novastack \
 && install -m 0755 target/release/novastack /usr/local/bin/novastack

FROM ${RUNTIME_IMAGE} AS runtime
# CA certificates for any tooling in the image and for HTTPS upstreams that rely on the
# system store (the gateway's own client carries its root certificates).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 novastack \
 && useradd --system --uid 10001 --gid novastack --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin novastack
COPY --from=builder /usr/local/bin/novastack /usr/local/bin/novastack
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["novastack"]
# The config comes from the gateway-config ConfigMap (deploy/k8s); SIGHUP reloads it.
CMD ["serve", "--config", "/etc/novastack/gateway.yaml", "--host", "0.0.0.0", "--port", "8080", "--shutdown-timeout", "30"]
