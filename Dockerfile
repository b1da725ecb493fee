# ggrok-server in a container: built with Rust on Debian 12, run on debian:bookworm-slim as a
# non-root user. One port (PORT, 8080 by default) serves tunnels, the control endpoint and /healthz.
#
#   docker build -t ggrok-server .
#   docker run -p 8080:8080 -e GGROK_DOMAIN=tunnel.example.com -e GGROK_TOKENS=<token> ggrok-server
#
# docs/deploy.md has the PaaS, VPS and reverse-proxy recipes.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# The whole workspace (minus what .dockerignore drops): cargo reads every member's manifest,
# src-tauri's included, to check Cargo.lock under --locked, but compiles only ggrok-server and
# its dependencies. rustls uses the ring provider, which needs only the C compiler already in
# this image; no OpenSSL, no cmake. The etcd client (--cluster) compiles etcd's gRPC definitions
# at build time: protoc and the well-known types they import.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p ggrok-server \
 && install -D --strip target/release/ggrok-server /out/ggrok-server

# Same Debian release as the builder, so the binary's glibc matches (it needs only libc, libm and
# libgcc_s). gcr.io/distroless/cc-debian12:nonroot would run it too, in a smaller image with no
# shell: then without the RUN and the HEALTHCHECK below.
FROM debian:bookworm-slim
# UID and GID 10001, outside the system range on purpose (useradd warns about that, harmlessly),
# so they collide with no user on a host that bind-mounts /data.
RUN groupadd --system --gid 10001 ggrok \
 && useradd --system --uid 10001 --gid ggrok --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ggrok \
 && install -d -o ggrok -g ggrok -m 0700 /data
COPY --from=build /out/ggrok-server /usr/local/bin/ggrok-server
# The server's only writable place: the token database (GGROK_DB). Mount a volume here to keep
# tokens made with `docker exec ... ggrok-server token create` across container replacements.
WORKDIR /data
ENV GGROK_DB=/data/ggrok.db GGROK_ACME_CACHE=/data/acme
# Numeric, so orchestrators that insist on a non-root UID (runAsNonRoot) can see it is one.
USER 10001:10001
# With PORT set and no --listen/GGROK_LISTEN, the server listens on 0.0.0.0:$PORT. A PaaS that
# injects its own PORT overrides this default.
ENV PORT=8080
EXPOSE 8080
# No curl or wget in the image: bash's /dev/tcp asks /healthz over plain HTTP on the port the
# server listens on (GGROK_LISTEN's port if set, else PORT). With --tls-cert inside the
# container the check cannot speak TLS: run with --no-healthcheck then.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "p=${GGROK_LISTEN##*:}; exec 3<>/dev/tcp/127.0.0.1/${p:-${PORT:-8080}} && printf 'GET /healthz HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && grep -qx ok <&3"]
# Exec form: ggrok-server is PID 1 and gets SIGTERM from `docker stop` directly, then drains
# requests in flight for --drain-timeout (10 s by default; give `docker stop -t` more than that).
ENTRYPOINT ["ggrok-server"]
