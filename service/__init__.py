"""The sdapi REST server, the gRPC server, the job queue and the command line."""
