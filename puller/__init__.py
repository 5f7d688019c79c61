"""puller: pull, cache, unpack, compare and run container images without a Docker daemon."""
