# The reference engine (`bap-engine engine`) as a container image for tests,
# benchmarks and local runs. The context holds only this file (as Dockerfile)
# and a static (CGO_ENABLED=0) bap-engine binary; see scripts/engine-image.sh
# and dockertest.BuildEngineImage, which both build it with the classic builder.
FROM scratch
COPY bap-engine /bap-engine
ENTRYPOINT ["/bap-engine", "engine"]
EXPOSE 8000
