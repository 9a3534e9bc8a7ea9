# The orchestrator as a static binary on an empty base image.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
# The Go client is a module of its own, which go.mod replaces with ./client.
COPY client/go.mod client/
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/bap-engine ./cmd/bap-engine

FROM scratch
COPY --from=build /out/bap-engine /bap-engine
EXPOSE 8000
ENTRYPOINT ["/bap-engine"]
CMD ["serve"]
