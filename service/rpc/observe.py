"""The gRPC door's counterpart of service/http/observe.py and drain_gate.py: every call counted by method and
status code (sdedge_grpc_requests_total), sdedge's own RPCs refused with UNAVAILABLE while the server drains, and
the `sdedge.v1.Metrics` service (proto/sdedge/v1/metrics.proto) that sends the /metrics exposition."""

from __future__ import annotations

import grpc

from service.generated import metrics_pb2, metrics_pb2_grpc
from service.runtime.drain import REASON
from service.runtime.metrics import CONTENT_TYPE
from service.runtime.state import ServerState

METRICS_SERVICE = metrics_pb2.DESCRIPTOR.services_by_name["Metrics"].full_name
# What a waiting client or an operator still needs while the server drains (as REST's OPEN_WHILE_DRAINING).
OPEN_WHILE_DRAINING = frozenset({"GetProgress", "Interrupt", "Skip"})


class MetricsServicer(metrics_pb2_grpc.MetricsServicer):
    def __init__(self, state: ServerState):
        self.state = state

    def GetMetrics(self, request, context):
        return metrics_pb2.GetMetricsResponse(content_type=CONTENT_TYPE,
                                              text=self.state.metrics.exposition().decode("utf-8"))


def _code(context) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


class ObserveInterceptor(grpc.ServerInterceptor):
    """Outermost interceptor: counts every call with the code it ended with; refuses sdedge's own RPCs
    (`gated_services`) while `state.draining`."""

    def __init__(self, state: ServerState, gated_services: set[str]):
        self.state = state
        self.gated_services = gated_services

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        service, _, name = method.lstrip("/").rpartition("/")
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        counter = self.state.metrics.grpc_requests
        refuse = service in self.gated_services and name not in OPEN_WHILE_DRAINING

        def check(context) -> None:
            if refuse and self.state.draining:
                context.abort(grpc.StatusCode.UNAVAILABLE, REASON)

        if handler.response_streaming:
            if handler.request_streaming:
                return handler  # sdedge has no bidi RPCs of its own (reflection's is counted nowhere)
            inner = handler.unary_stream

            def stream(request, context):
                try:
                    check(context)
                    yield from inner(request, context)
                except GeneratorExit:  # the client went away mid-stream
                    counter.labels(method, "CANCELLED").inc()
                    raise
                except BaseException:
                    counter.labels(method, _code(context) if context.code() else "UNKNOWN").inc()
                    raise
                counter.labels(method, _code(context)).inc()

            return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer,
                                                        handler.response_serializer)
        if handler.request_streaming:
            return handler
        inner_unary = handler.unary_unary

        def unary(request, context):
            try:
                check(context)
                response = inner_unary(request, context)
            except BaseException:
                counter.labels(method, _code(context) if context.code() else "UNKNOWN").inc()
                raise
            counter.labels(method, _code(context)).inc()
            return response

        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
