"""The gRPC door (proto/sdedge.proto): the servicer, protobuf ⇄ Python conversion and the mapping of the domain
exceptions (service/a1111/errors.py) to gRPC status codes. Not named `grpc`, so it never shadows the library."""
