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
# askama.toml tells the template crate where the web page's templates are (src/api/web/templates).
COPY Cargo.toml Cargo.lock build.rs askama.toml ./
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked --features turbo && strip target/release/imgbatch

FROM debian:bookworm-slim
# The service runs as `imgbatch`, uid and gid 10001 (fixed, so a bind mount can be prepared
# with `chown 10001:10001`). It writes only under /data: the SQLite database (DATABASE_URL) and
# the images (IMGBATCH_STORAGE, /data/images). Both folders exist in the image and belong to
# the user, so a fresh named volume mounted on /data or /data/images starts out owned by it
# (Docker copies the folder's content and ownership into an empty named volume).
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 imgbatch \
    && useradd --system --uid 10001 --gid imgbatch --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin imgbatch \
    && mkdir -p /data/images \
    && chown -R imgbatch:imgbatch /data
COPY --from=build /src/target/release/imgbatch /usr/local/bin/imgbatch
USER imgbatch:imgbatch
WORKDIR /data
ENV IMGBATCH_BIND=0.0.0.0:3000 \
    DATABASE_URL=sqlite:///data/imgbatch.db \
    IMGBATCH_STORAGE=/data/images
EXPOSE 3000
# Readiness: /readyz answers 200 when the database answers (503 otherwise); /healthz is only
# liveness. The port is the one IMGBATCH_BIND names. docker-compose.yml uses the same check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${IMGBATCH_BIND##*:}/readyz" || exit 1
ENTRYPOINT ["imgbatch"]
CMD ["serve"]
