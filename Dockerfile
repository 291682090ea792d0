# The livecomments binary (every role) on Debian slim. compose.yaml builds it as livecomments:local.
#   docker build -t livecomments:local .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p livecomments \
 && cp target/release/livecomments /usr/local/bin/livecomments

FROM debian:bookworm-slim
# curl: the compose healthchecks (GET /readyz).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/livecomments --create-home livecomments
COPY --from=build /usr/local/bin/livecomments /usr/local/bin/livecomments
USER livecomments
WORKDIR /var/lib/livecomments
ENV LIVECOMMENTS_LISTEN=0.0.0.0:8080 \
    LIVECOMMENTS_DATA_DIR=/var/lib/livecomments/data
EXPOSE 8080
ENTRYPOINT ["livecomments"]
CMD ["standalone"]
