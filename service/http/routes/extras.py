"""Extras: POST /sdapi/v1/extra-single-image and /extra-batch-images, run as jobs on the queue."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from engine.upscalers import UpscalerRegistry
from service.a1111.encode import encode_image, to_base64
from service.a1111.extras import ExtrasOutput, ExtrasPlan, check_size, plaintext_to_html, plan_extras, run_one
from service.a1111.image_io import ImageInputError, decode_image, limits_from_options
from service.a1111.job_options import JobOptions
from service.a1111.sdapi_models import LenientInt
from service.http.routes.generation import TASK_ID_HEADER, wait_for
from service.runtime.generate import enqueue
from service.runtime.jobs import Job

router = APIRouter()


class ExtrasBaseRequest(BaseModel):
    """A1111's ExtrasBaseRequest; the int default 2 of `upscaling_resize` is kept (infotext `by: 2`)."""

    model_config = ConfigDict(extra="ignore")

    resize_mode: Literal[0, 1] = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0, ge=0, le=1, allow_inf_nan=False)
    codeformer_visibility: float = Field(0, ge=0, le=1, allow_inf_nan=False)
    codeformer_weight: float = Field(0, ge=0, le=1, allow_inf_nan=False)
    upscaling_resize: float = Field(2, gt=0, allow_inf_nan=False)
    upscaling_resize_w: LenientInt = Field(512, ge=1)
    upscaling_resize_h: LenientInt = Field(512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1, allow_inf_nan=False)
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = ""


class FileData(BaseModel):
    data: str
    name: str


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData]  # noqa: N815 (A1111's field name)


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


def _decode(value: str, options) -> object:
    try:
        return decode_image(value, limits_from_options(options))
    except ImageInputError as exc:
        raise HTTPException(status_code=exc.status_code, detail=f"Invalid encoded image: {exc}") from None


def extras_job(images: list[tuple[object, str | None]], plan: ExtrasPlan, registry: UpscalerRegistry,
               enable_pnginfo: bool) -> Job:
    """A queued `extras` job (A1111 `run_postprocessing`): job_count = number of images, the input shown as
    the live preview; interrupt stops before the next image, skip drops the current one."""

    def run(job: Job) -> tuple[list[ExtrasOutput], str]:
        job.progress.job_count = len(images)
        outputs: list[ExtrasOutput] = []
        line = ""
        for i, (image, name) in enumerate(images):
            if job.should_stop() and job.interrupted:  # also uses up a skip left from the previous image
                break
            job.progress.job_no, job.progress.textinfo = i, name
            job.preview.image, job.preview.id = image, job.preview.id + 1
            job.notify()
            output, line = run_one(image, plan, registry, enable_pnginfo)
            if job.should_stop() and not job.interrupted:
                continue
            outputs.append(output)
        job.progress.job_no = len(images)
        return outputs, plaintext_to_html(line)

    return Job(kind="extras", run=run)


def _encode(outputs: list[ExtrasOutput], options: JobOptions) -> list[str]:
    fmt, quality = options.samples_format, options.jpeg_quality
    return [to_base64(encode_image(o.image, fmt, None, quality, options.webp_lossless,
                                   text=o.text)) for o in outputs]


async def _run(request: Request, response: Response, images: list[tuple[object, str | None]], plan: ExtrasPlan):
    state = request.app.state.sdedge
    options = JobOptions.from_mapping(state.options.snapshot())
    for image, _ in images:
        check_size(plan, image.width, image.height)
    job = enqueue(state, extras_job(images, plan, state.upscalers, options.enable_pnginfo))
    response.headers[TASK_ID_HEADER] = job.id
    outputs, html_info = await wait_for(job, state, request)
    return await run_in_threadpool(_encode, outputs, options), html_info


@router.post("/sdapi/v1/extra-single-image", response_model=ExtrasSingleImageResponse)
async def extra_single_image(req: ExtrasSingleImageRequest, request: Request, response: Response):
    state = request.app.state.sdedge
    plan = plan_extras(req, state.upscalers)
    image = await run_in_threadpool(_decode, req.image, state.options.snapshot())
    images, html_info = await _run(request, response, [(image, None)], plan)
    return {"html_info": html_info, "image": images[0] if images else None}


@router.post("/sdapi/v1/extra-batch-images", response_model=ExtrasBatchImagesResponse)
async def extra_batch_images(req: ExtrasBatchImagesRequest, request: Request, response: Response):
    state = request.app.state.sdedge
    plan = plan_extras(req, state.upscalers)
    options = state.options.snapshot()
    images = [(await run_in_threadpool(_decode, item.data, options), "") for item in req.imageList]
    encoded, html_info = await _run(request, response, images, plan)
    return {"html_info": html_info, "images": encoded}
