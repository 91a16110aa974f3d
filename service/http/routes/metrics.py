"""GET /metrics: the Prometheus text exposition of service/runtime/metrics.py. Behind `--api-auth` like the API
(service/http/auth.py exempts only A1111's open routes): give the scraper the credentials (Prometheus
`basic_auth` in its scrape config)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.runtime.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(request.app.state.sdedge.metrics.exposition(), media_type=CONTENT_TYPE)
