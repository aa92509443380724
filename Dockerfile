# cloudvpp in a container: built in a Rust image, run as an unprivileged user in
# debian:bookworm-slim (the binary needs only libc; TLS is rustls with ring, SQLite is built in).
#
#   docker build --build-arg CLOUDVPP_COMMIT=$(git rev-parse --short=12 HEAD) -t cloudvpp .
#   deploy/check-image.sh    # builds it and checks the running container (docs/OPERATIONS.md)
#   docker run -d --name cloudvpp -p 8080:8080 -p 9000:9000 -v cloudvpp:/var/lib/cloudvpp \
#     -e CLOUDVPP_API_KEY=... cloudvpp
#
# The default command serves both services on SQLite in the volume; give another command
# (the same flags as on a host) for PostgreSQL, a device CA or public URLs (docs/OPERATIONS.md).

# The build stage's Rust: the newest 1.x by default; pin one for a reproducible build with
# --build-arg RUST_VERSION=1.89 (or newer: Cargo.lock's uuid 1.29 needs 1.89, whatever
# Cargo.toml's rust-version says).
ARG RUST_VERSION=1
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# .git is not copied (.dockerignore): `cloudvpp --version` names the commit given here.
ARG CLOUDVPP_COMMIT=
ENV CLOUDVPP_COMMIT=${CLOUDVPP_COMMIT}
RUN cargo build --release --locked -p cloudvpp \
 && strip target/release/cloudvpp \
 && target/release/cloudvpp --version

FROM debian:bookworm-slim
# ca-certificates: the engine calls Apple's Apps and Books service over HTTPS and push goes
# to APNs; rustls reads the system's roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 cloudvpp \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/cloudvpp --create-home \
      --shell /usr/sbin/nologin cloudvpp \
 && chmod 0700 /var/lib/cloudvpp
COPY --from=build /src/target/release/cloudvpp /usr/local/bin/cloudvpp
USER 10001:10001
WORKDIR /var/lib/cloudvpp
VOLUME ["/var/lib/cloudvpp"]
# Apps and Books service, MDM service (each answers /healthz and /readyz).
EXPOSE 8080 9000
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cloudvpp"]
CMD ["serve", "--appsbooks-listen", "0.0.0.0:8080", "--mdm-listen", "0.0.0.0:9000", "--database", "sqlite:///var/lib/cloudvpp/cloudvpp.db", "--log-format", "json"]
