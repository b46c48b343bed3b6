# corebus in a container: a multi-stage build, a small runtime image, a non-root user, and a
# health check that reads the broker's ready line and then pings it.
#
#   docker build -t corebus --build-arg COREBUS_GIT_COMMIT="$(git rev-parse --short=12 HEAD)" .
#   docker run --rm -p 7070:7070 --ulimit nofile=65536:65536 corebus
#
# Thread-per-core: by default one shard per CPU the container may use (`--cpus`/`--cpuset-cpus`
# limit that); pinning is off here because the container's CPU numbers are the host's.

# 1.88: the oldest toolchain every locked dependency accepts (hdrhistogram 7.6 asks for it,
# although Cargo.toml's rust-version still says 1.85).
FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so a change to the sources does not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
COPY benches ./benches
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin corebus \
    && rm -rf src
COPY src ./src
COPY corebus.example.toml ./
# `.git` is not copied: build.rs takes the commit from here (`unknown` if not given).
ARG COREBUS_GIT_COMMIT=unknown
ENV COREBUS_GIT_COMMIT=${COREBUS_GIT_COMMIT}
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin corebus \
    && strip target/release/corebus

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin corebus \
    && mkdir -p /run/corebus /etc/corebus \
    && chown corebus:corebus /run/corebus
COPY --from=build /src/target/release/corebus /usr/local/bin/corebus
COPY --from=build /src/corebus.example.toml /etc/corebus/corebus.example.toml
USER 10001:10001
ENV COREBUS_LISTEN=0.0.0.0:7070 \
    COREBUS_NO_PIN=true \
    COREBUS_READY_FILE=/run/corebus/ready
EXPOSE 7070
# Healthy once the ready line is written (the broker listens) and while it answers a PING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/bin/sh", "-c", "grep -q '^corebus ready' /run/corebus/ready && corebus ping --timeout 2s"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/corebus"]
CMD ["serve"]
