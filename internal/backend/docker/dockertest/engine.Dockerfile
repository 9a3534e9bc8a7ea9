# The reference engine (`bap-engine engine`) as a container image for tests,
# benchmarks and local runs. The context holds only this file (as Dockerfile)
# and a static (CGO_ENABLED=0) binary named bap-engine: the orchestrator's own
# (scripts/engine-image.sh) or the standalone engine, which answers the same
# `engine` and `snapshot FROM TO` commands (dockertest.BuildEngineImage). Both
# build it with the classic builder.
FROM scratch
COPY bap-engine /bap-engine
ENTRYPOINT ["/bap-engine", "engine"]
EXPOSE 8000
