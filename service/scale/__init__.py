"""Scale-out on Ray Serve (extra `ray`): an sdapi ingress that routes whole jobs to replicas holding sdedge
runtimes, chosen by checkpoint (model multiplexing), with progress/interrupt routed to the replica that holds the
task. Only modules of this package import ray; engine/ and the plain server never do (docs/scale-out.md)."""
