# Multi-stage build of firehose-edge: a cached dependency layer, then a slim non-root runtime.
#   docker build -t firehose-edge .
#   docker run -p 5000:5000 -p 9464:9464 -v fe-queue:/var/lib/firehose-edge \
#     -e AWS_REGION=us-east-1 firehose-edge

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, against placeholder sources, so edits to src/ reuse this layer. Cargo
# reads a manifest only when every target it declares ([lib], [[bin]], [[bench]], [[example]],
# [[test]]) has its file, so a placeholder is made at each declared path (or the default one
# for its name): a target added to Cargo.toml needs no change here. The placeholders outside
# src/ stay for the build below, which copies only src/ and config/.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && awk 'function value() { match($0, /"[^"]*"/); return substr($0, RSTART + 1, RLENGTH - 2) } \
            function declared() { if (kind == "") return; \
                if (path == "") path = kind == "lib" ? "src/lib.rs" : dir[kind] "/" name ".rs"; \
                print kind, path } \
            BEGIN { dir["bin"] = "src/bin"; dir["bench"] = "benches"; \
                    dir["example"] = "examples"; dir["test"] = "tests" } \
            /^[[:space:]]*\[/ { declared(); kind = ""; name = ""; path = "" } \
            /^\[lib\]/ { kind = "lib" } \
            /^\[\[(bin|bench|example|test)\]\]/ { match($0, /[a-z]+/); kind = substr($0, RSTART, RLENGTH) } \
            kind != "" && /^name[[:space:]]*=/ { name = value() } \
            kind != "" && /^path[[:space:]]*=/ { path = value() } \
            END { declared() }' Cargo.toml \
       | while read -r kind path; do \
             mkdir -p "$(dirname "$path")"; \
             if [ "$kind" = lib ]; then : > "$path"; else echo 'fn main() {}' > "$path"; fi; \
         done \
    && cargo build --release --locked --bin firehose-edge \
    && rm -rf src
COPY src ./src
COPY config ./config
# Touch so cargo rebuilds the crate itself rather than trusting the placeholder's mtime.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin firehose-edge

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/firehose-edge --create-home firehose-edge
COPY --from=build /src/target/release/firehose-edge /usr/local/bin/firehose-edge
COPY config/firehose.toml /etc/firehose-edge/config.toml
USER firehose-edge
WORKDIR /var/lib/firehose-edge
# The queue: keep it on a volume, or a restart loses what Firehose has not taken yet.
VOLUME ["/var/lib/firehose-edge"]
EXPOSE 5000 9464
ENV FIREHOSE_EDGE__QUEUE__PATH=/var/lib/firehose-edge/queue
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["firehose-edge", "healthcheck", "--config", "/etc/firehose-edge/config.toml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["firehose-edge", "--config", "/etc/firehose-edge/config.toml"]
