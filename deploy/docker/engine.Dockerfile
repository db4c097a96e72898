# syntax=docker/dockerfile:1
# The engine image: `novastack serve --device hip` on AMD GPUs (ROCm).
# Build from the repository root:
#   docker build -f deploy/docker/engine.Dockerfile -t ghcr.io/novastack/engine:0.1.0 .
#
# The `hip` feature opens libamdhip64 and libhiprtc with dlopen at run time, and the
# engine compiles its HIP kernels with hiprtc for the GPU it finds when it starts (the
# kernel sources are embedded in the binary). So the build needs no ROCm at all; the
# runtime stage is AMD's ROCm base image, which carries the HIP runtime and hiprtc.

ARG ROCM_VERSION=6.2.4
# Build and run on the same distribution (Ubuntu 22.04, as ROCm's own images): the
# binary links against the builder's glibc.
ARG BUILDER_IMAGE=ubuntu:22.04
ARG RUNTIME_IMAGE=rocm/dev-ubuntu-22.04:${ROCM_VERSION}

FROM ${BUILDER_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The workspace needs Rust 1.89 or newer; 1.95.0 is what CI builds with.
ARG RUST_VERSION=1.95.0
ENV DEBIAN_FRONTEND=noninteractive \
    RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH
# A C compiler for the crates that build C (oniguruma, mimalloc, ring). Distribution
# packages follow the base image's release; the Rust toolchain is pinned below.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config \
 && rm -rf /var/lib/apt/lists/*
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
      | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}" \
 && rustc --version
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p novastack --features hip \
 && install -m 0755 target/release/novastack /usr/local/bin/novastack

FROM ${RUNTIME_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The ROCm base image has the libraries the engine opens at run time; fail the build,
# not the pod, if a ROCm release ever moves them.
RUN printf '%s\n' /opt/rocm/lib > /etc/ld.so.conf.d/zz-rocm.conf \
 && ldconfig \
 && ldconfig -p | grep 'libamdhip64\.so' \
 && ldconfig -p | grep 'libhiprtc\.so'
# A non-root user; it joins `video` here, and the pod adds the GPU nodes' render group
# (deploy/k8s/engine-statefulset.yaml).
RUN groupadd --system --gid 10001 novastack \
 && useradd --system --uid 10001 --gid novastack --groups video --home-dir /home/novastack \
      --create-home --shell /usr/sbin/nologin novastack
COPY --from=builder /usr/local/bin/novastack /usr/local/bin/novastack
USER 10001:10001
WORKDIR /home/novastack
EXPOSE 8000
ENTRYPOINT ["novastack"]
# Kubernetes passes its own args (deploy/k8s/engine-statefulset.yaml); this default
# serves a model mounted at /models/model.
CMD ["serve", "--model", "/models/model", "--host", "0.0.0.0", "--port", "8000", "--device", "hip"]
