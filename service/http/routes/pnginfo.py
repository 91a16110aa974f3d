"""POST /sdapi/v1/png-info: the infotext in an image, raw and parsed as A1111 parses it (A1111
modules/images.py: read_info_from_image)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel

from service.a1111.image_io import ImageInputError, decode_image, limits_from_options
from service.a1111.image_metadata import json_safe, read_info_from_image
from service.a1111.infotext import parse_infotext
from service.a1111.styles import styles_of

router = APIRouter()


class PNGInfoRequest(BaseModel):
    image: str


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


@router.post("/sdapi/v1/png-info", response_model=PNGInfoResponse)
def png_info(req: PNGInfoRequest, request: Request):
    state = request.app.state.sdedge
    options = state.options.snapshot()
    try:
        image = decode_image(req.image.strip(), limits_from_options(options))
    except ImageInputError as exc:
        raise HTTPException(status_code=exc.status_code, detail=f"Invalid encoded image: {exc}") from None
    geninfo, items = read_info_from_image(image)
    geninfo = geninfo or ""
    parameters = parse_infotext(geninfo, options, styles_of(state).extract_styles)
    return {"info": geninfo, "items": json_safe(items), "parameters": json_safe(parameters)}
