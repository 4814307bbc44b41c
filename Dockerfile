# Multi-stage build: compile in the Rust image, run from a slim Debian with only the binary.
# The image is built with the accelerated codec (`turbo`: libjpeg-turbo's SIMD encoder for the
# pixel path, docs/performance.md), which needs nasm at build time; build.rs fails the build
# without it rather than fall back to libjpeg's slow C code.
# The builder's Rust must be at least Cargo.toml's rust-version, the highest rust-version of any
# locked dependency (.ci/container_check.sh fails otherwise).
FROM rust:1.89-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends nasm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked --features turbo && strip target/release/imgbatch

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /data imgbatch \
    && mkdir -p /data && chown imgbatch /data
COPY --from=build /src/target/release/imgbatch /usr/local/bin/imgbatch
USER imgbatch
WORKDIR /data
ENV IMGBATCH_BIND=0.0.0.0:3000
EXPOSE 3000
ENTRYPOINT ["imgbatch"]
CMD ["serve"]
