"""Which replica a call goes to: by checkpoint (Ray Serve's model multiplexing), or to one named replica.

Generation calls carry the checkpoint as the multiplexed model id, so Ray's router prefers a replica that has it
loaded (and loads it on the replica with the fewest models when none has). Progress, interrupt and skip of a
task must reach the replica that holds the task: the ingress names that replica (`replica=` keyword of the call)
and this router sends the call there while the replica lives. Ray Serve's public extension point for this is a
custom request router (`ray.serve.request_router`, alpha in Ray 2.60)."""

from __future__ import annotations

import random

from ray.serve.request_router import (
    FIFOMixin,
    LocalityMixin,
    MultiplexMixin,
    PendingRequest,
    RequestRouter,
    RunningReplica,
)

TARGET_KWARG = "replica"  # the keyword argument naming the replica (ReplicaID.unique_id) a call must reach


def replica_named(candidates: list[RunningReplica], unique_id: str | None) -> RunningReplica | None:
    if not unique_id:
        return None
    return next((r for r in candidates if r.replica_id.unique_id == unique_id), None)


class TaskAffinityRouter(FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter):
    """Power of two choices among the replicas multiplexing prefers (Ray's default), except for calls that name
    their replica: those go to it alone. A named replica that is gone (killed, scaled down) is no candidate any
    more; the call then takes the default route and the replica that gets it answers for a task it does not
    hold (A1111's idle progress, an interrupt that stops nothing)."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if pending_request is not None:
            target = replica_named(candidate_replicas, pending_request.kwargs.get(TARGET_KWARG))
            if target is not None:
                pending_request.routing_context.should_backoff = True
                return [[target]]
        if pending_request is not None and pending_request.metadata.multiplexed_model_id:
            ids = self.apply_multiplex_routing(pending_request=pending_request)
        else:
            ids = self.apply_locality_routing(pending_request=pending_request)
        chosen = random.sample(sorted(ids, key=lambda i: i.unique_id), k=min(2, len(ids)))
        return [[self._replicas[i] for i in chosen if i in self._replicas]] if chosen else []
