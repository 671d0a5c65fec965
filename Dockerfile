# syntax=docker/dockerfile:1
#
# kafka-infer container image: builder (Rust toolchain + librdkafka's C build) -> slim runtime.
#
#   docker build -t kafka-infer:local .        (or: docker compose up --build)
#   docker run --rm -e KAFKA_BROKERS=host:9092 -p 9898:9898 kafka-infer:local
#
# NOTE: this image has never been built on the dev machines: they have a docker client but no
# Docker engine, and no registry access to pull base images. What was checked instead:
# - the builder's commands (cargo build --release --locked -p kafka-infer, then objcopy) were run
#   locally (rustc 1.95, Debian 12 gcc/make) from scratch in a copy of the build context that
#   .dockerignore leaves (no target/, no .git): clean build OK, binary runs;
# - rdkafka-sys (features ssl + zstd: TLS, SASL PLAIN/SCRAM, every compression codec) runs
#   librdkafka's ./configure and `make libs`, which need bash, gcc/g++, make, pkg-config (finds
#   zlib and OpenSSL), zlib1g-dev, libssl-dev and python3 (librdkafka's lds-gen.py writes the
#   linker script); zstd is compiled from source by zstd-sys; all installed below;
# - `ldd target/release/kafka-infer` shows libc, libm, libgcc_s, libz, libssl and libcrypto, so
#   the runtime stage needs zlib1g and libssl3 (installed explicitly);
# - syntax: hadolint and BuildKit's Dockerfile parser.

FROM rust:1.95-bookworm AS builder

# Debian package versions are not pinned: the bookworm suite only moves for security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ make pkg-config python3 zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# BuildKit cache mounts keep the crates.io downloads and compiled dependencies between builds
# (the whole workspace manifest, loadgen included, is needed to resolve Cargo.lock, so a
# stub-source dependency layer would be brittle). The binary is copied out of the cached
# target directory in the same step. The release profile keeps debug info for local
# profiling (136 MB binary); the image drops it (26 MB) but keeps the symbol table, so
# backtraces still name functions.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kafka-infer \
 && mkdir -p /out \
 && objcopy --strip-debug target/release/kafka-infer /out/kafka-infer


FROM debian:bookworm-slim AS runtime

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgcc-s1 zlib1g libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 kafka-infer \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kafka-infer

# The model is compiled into the binary (override with KAFKA_INFER_MODEL_DIR and a volume).
COPY --from=builder /out/kafka-infer /usr/local/bin/kafka-infer

WORKDIR /app
ENV KAFKA_INFER_METRICS_ADDR=0.0.0.0:9898

# Fail the image build if a shared library is missing or the CLI does not start.
RUN kafka-infer --version && kafka-infer run --help >/dev/null

USER 10001:10001
EXPOSE 9898
# The worker handles SIGTERM (Docker's default stop signal) by draining and exiting 0.
ENTRYPOINT ["kafka-infer"]
CMD ["run"]
