# The orchestrator as a static binary on an empty base image, with CA
# certificates (for sslmode=verify-full to PostgreSQL) and a non-root user.
#
#   docker build --build-arg VERSION=v1.2.3 --build-arg COMMIT=$(git rev-parse HEAD) -t bap-engine .
#   docker build --target engine -t bap-engine-ref:latest .   # the reference engine image
#
# (`make image` and `make engine-image` do both.)
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
# The Go client is a module of its own, which go.mod replaces with ./client.
COPY client/go.mod client/
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags="-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/bap-engine ./cmd/bap-engine

# The reference engine (`bap-engine engine`): the default engine image of
# docker-compose.yml, built from the same binary. It keeps root: its brain
# lives on a fresh named volume, which Docker creates root-owned.
FROM scratch AS engine
COPY --from=build /out/bap-engine /bap-engine
EXPOSE 8000
ENTRYPOINT ["/bap-engine", "engine"]

# The orchestrator (the default target). It runs as 65532 (no shell, no
# passwd entry needed); give it the Docker socket's group to reach the
# daemon (docker-compose.yml: group_add). A helper container that must
# write engine volumes sets its own user.
FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/bap-engine /bap-engine
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["/bap-engine"]
CMD ["serve"]
