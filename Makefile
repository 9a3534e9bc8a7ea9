# Developer shortcuts. Each target is a thin wrapper around a documented
# script, so CI and people run the same commands.

.PHONY: engine-image
# The reference engine as a local Docker image (TAG=bap-engine-ref:dev).
engine-image:
	./scripts/engine-image.sh $(TAG)

.PHONY: controlplane
# The real kube-apiserver and etcd the Kubernetes tests start, built once
# per machine into ~/.cache/bap-engine/controlplane/<version>.
controlplane:
	./scripts/controlplane.sh
