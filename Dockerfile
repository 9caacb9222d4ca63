# syntax=docker/dockerfile:1
# Build: docker build -t jobhook .
# Run:   docker run -p 8080:8080 -v jobhook-data:/data -e JOBHOOK_WEBHOOK_SECRET=... jobhook

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && echo 'fn main() {}' > src/bin/jobhook-bench.rs \
    && cargo build --release --locked --bin jobhook && rm -rf src
COPY migrations migrations
# The dashboard's templates are compiled in (askama); its CSS and JS live under src/.
COPY templates templates
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin jobhook

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin jobhook \
    && mkdir -p /data && chown jobhook:jobhook /data
COPY --from=build /src/target/release/jobhook /usr/local/bin/jobhook
COPY config/jobhook.example.toml /etc/jobhook/jobhook.example.toml

ENV JOBHOOK_DATABASE_URL=sqlite:///data/jobhook.db \
    JOBHOOK_SERVER_LISTEN=0.0.0.0:8080 \
    JOBHOOK_LOG_FORMAT=json
USER jobhook
VOLUME ["/data"]
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["jobhook", "healthcheck"]
ENTRYPOINT ["jobhook"]
CMD ["serve"]
