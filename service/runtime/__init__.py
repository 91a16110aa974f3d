"""The runtime both doors share: the job queue and its worker, the model registry, options, progress, memory
admission and the one submit path. No web framework and no gRPC here."""
