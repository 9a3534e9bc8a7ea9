# Developer shortcuts. Each target is a thin wrapper around a documented
# command or script, so CI and people run the same commands.

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: build image engine-image test

# The binary, stamped with its version and commit (bap-engine version).
build:
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/bap-engine ./cmd/bap-engine

# The orchestrator image (TAG=bap-engine:$(VERSION)), stamped likewise.
image:
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t $(or $(TAG),bap-engine:$(VERSION)) .

# The reference engine as a local Docker image (TAG=bap-engine-ref:dev).
engine-image:
	./scripts/engine-image.sh $(TAG)

# The whole suite, as CI runs it.
test:
	./scripts/test.sh
.PHONY: controlplane
# The real kube-apiserver and etcd the Kubernetes tests start, built once
# per machine into ~/.cache/bap-engine/controlplane/<version>.
controlplane:
	./scripts/controlplane.sh
