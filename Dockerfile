# The dualwrite binary in a small Debian image. Built by docker-compose.yml; on its own:
#   docker build -t dualwrite .  &&  docker run --rm dualwrite --help
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p dualwrite-proxy --bin dualwrite \
 && cp target/release/dualwrite /usr/local/bin/dualwrite

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home dualwrite
COPY --from=build /usr/local/bin/dualwrite /usr/local/bin/dualwrite
COPY rewrite-rules/examples /etc/dualwrite/examples
USER dualwrite
EXPOSE 6432 9187
ENTRYPOINT ["dualwrite"]
CMD ["serve"]
