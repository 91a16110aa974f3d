"""gRPC Txt2Img/Img2Img on a replica: sdedge's own servicer (service/rpc/server.py) called in process with a
stand-in context, so a request means the same as on `sdedge serve`'s gRPC door and fails with the same status."""

from __future__ import annotations

from service.generated import sdedge_pb2 as pb
from service.rpc.server import SdEdgeServicer
from service.runtime.state import ServerState

REQUESTS = {"txt2img": pb.Txt2ImgRequest, "img2img": pb.Img2ImgRequest}


class Aborted(Exception):
    """What the servicer's `context.abort` raises here: the status the ingress sends its client."""

    def __init__(self, code, details: str):
        super().__init__(details)
        self.code, self.details = code, details


class LocalContext:
    """The part of grpc.ServicerContext the unary generation path uses. The call never ends early on this side:
    a client that leaves cancels the Ray call instead (the job then finishes unobserved)."""

    def add_callback(self, callback) -> bool:
        return True

    def is_active(self) -> bool:
        return True

    def abort(self, code, details: str):
        raise Aborted(code, details)


def grpc_unary(state: ServerState, kind: str, message: bytes) -> tuple[bytes | None, tuple[str, str] | None]:
    """(serialized GenerationResponse, None), or (None, (status code name, details)). Blocking."""
    request = REQUESTS[kind].FromString(message)
    servicer = SdEdgeServicer(state)
    try:
        response = servicer._unary(kind, request, LocalContext())
    except Aborted as exc:
        return None, (exc.code.name, exc.details)
    return response.SerializeToString(), None
