# syntax=docker/dockerfile:1
#
# pgchat image: a static binary on distroless, non-root.
#
#   docker build -t pgchat .
#   docker run --rm -e DATABASE_URL=... pgchat            # serve (the default CMD)
#   docker run --rm -e DATABASE_URL=... pgchat migrate    # apply migrations, exit 0
#
# ENTRYPOINT is the binary and CMD its subcommand, so anything that replaces
# CMD picks the subcommand: compose's `command: ["migrate"]` and Fly's
# `release_command = "migrate"` both run `/pgchat migrate`.

# Build stage. GO_VERSION follows go.mod's go line; if the image's toolchain is
# older than go.mod asks for, GOTOOLCHAIN=auto (the default) fetches it.
ARG GO_VERSION=1.26
FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when go.mod or
# go.sum change, not on every source edit. The cache mount also keeps the
# module cache across builds that do change them.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download

# A static binary (no cgo, so no libc needed at run time), without local paths
# (-trimpath) and without symbol tables or DWARF (-s -w).
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/pgchat .

# Run stage: distroless static has CA certificates (for sslmode=require/verify
# against hosted Postgres), /etc/passwd and tzdata, and no shell. The :nonroot
# tag runs as uid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pgchat /pgchat
USER nonroot:nonroot
# $PORT, default 8080: /ws, /healthz, /readyz, /metrics and the web page.
EXPOSE 8080
# No HEALTHCHECK: distroless has no shell or curl to run one. Compose relies on
# HAProxy's checks of /readyz and Fly on [[http_service.checks]].
ENTRYPOINT ["/pgchat"]
CMD ["serve"]
