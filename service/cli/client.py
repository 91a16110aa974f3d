"""A small typed Python client for sdedge's gRPC API (`sdedge.v1.SdEdge`); see docs/grpc.md."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from service.generated import sdedge_pb2 as pb
from service.generated import sdedge_pb2_grpc as pb_grpc
from service.rpc.convert import struct_to_python

MiB = 1024 * 1024
ImageInput = bytes | Image.Image | Path


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes  # the encoded file, infotext embedded
    mime_type: str
    seed: int
    subseed: int
    infotext: str

    def to_pil(self) -> Image.Image:
        return Image.open(io.BytesIO(self.data))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.data)
        return path


@dataclass(frozen=True)
class Generation:
    images: list[GeneratedImage]
    info: dict[str, Any]  # the sdapi `info`, parsed
    parameters: dict[str, Any]  # the sdapi `parameters` echo
    task_id: str
    interrupted: bool


def image_bytes(image: ImageInput) -> bytes:
    if isinstance(image, bytes):
        return image
    if isinstance(image, Image.Image):
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()
    return Path(image).read_bytes()


def request_message(message_type: type[Message], fields: Mapping[str, Any]) -> Message:
    """A request from sdapi-named fields; None leaves a field unset, so the server applies A1111's default."""
    message = message_type()
    by_name = message_type.DESCRIPTOR.fields_by_name
    for name, value in fields.items():
        field = by_name.get(name)
        if field is None:
            raise TypeError(f"{message_type.DESCRIPTOR.name} has no field {name!r}")
        if value is None:
            continue
        if field.message_type is not None:  # Struct / ListValue
            getattr(message, name).update(value) if isinstance(value, Mapping) else getattr(message, name).extend(value)
        elif field.type == FieldDescriptor.TYPE_BYTES:
            if field.is_repeated:
                getattr(message, name).extend(image_bytes(v) for v in value)
            else:
                setattr(message, name, image_bytes(value))
        elif field.is_repeated:
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message


def _generation(images: Sequence[pb.Image], info_json: str, parameters: Message, task_id: str,
                interrupted: bool) -> Generation:
    return Generation(
        images=[GeneratedImage(i.data, i.mime_type, i.seed, i.subseed, i.infotext) for i in images],
        info=json.loads(info_json) if info_json else {},
        parameters=struct_to_python(parameters),
        task_id=task_id,
        interrupted=interrupted,
    )


class SdEdgeClient:
    """One channel to an sdedge server. `auth` is `user:pass` from the server's --api-auth."""

    def __init__(self, target: str = "127.0.0.1:50051", *, auth: str | None = None, timeout: float | None = None,
                 max_message_bytes: int = 64 * MiB):
        self.timeout = timeout
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ])
        self.stub = pb_grpc.SdEdgeStub(self.channel)
        self.metadata = (("authorization", "Basic " + base64.b64encode(auth.encode()).decode()),) if auth else ()

    def __enter__(self) -> SdEdgeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Callable, request: Message, timeout: float | None = None):
        return method(request, timeout=timeout if timeout is not None else self.timeout, metadata=self.metadata)

    # -- generation ---------------------------------------------------------------------------------------------

    def txt2img(self, prompt: str = "", *, timeout: float | None = None, **fields: Any) -> Generation:
        request = request_message(pb.Txt2ImgRequest, {"prompt": prompt, **fields})
        r = self._call(self.stub.Txt2Img, request, timeout)
        return _generation(r.images, r.info_json, r.parameters, r.task_id, r.interrupted)

    def img2img(self, init_images: Sequence[ImageInput], prompt: str = "", *, timeout: float | None = None,
                **fields: Any) -> Generation:
        request = request_message(pb.Img2ImgRequest, {"prompt": prompt, "init_images": init_images, **fields})
        r = self._call(self.stub.Img2Img, request, timeout)
        return _generation(r.images, r.info_json, r.parameters, r.task_id, r.interrupted)

    def events(self, request: pb.GenerateRequest, timeout: float | None = None) -> Iterator[pb.GenerateEvent]:
        """The raw `Generate` stream: Queued, Progress…, Image…, Done."""
        return self._call(self.stub.Generate, request, timeout)

    def generate(self, prompt: str = "", *, init_images: Sequence[ImageInput] | None = None,
                 on_progress: Callable[[pb.Progress], None] | None = None, preview_every_n_steps: int = 0,
                 timeout: float | None = None, **fields: Any) -> Generation:
        """txt2img (or img2img with `init_images`) over the stream, calling `on_progress` after every step."""
        if init_images is None:
            request = pb.GenerateRequest(txt2img=request_message(pb.Txt2ImgRequest, {"prompt": prompt, **fields}))
        else:
            body = request_message(pb.Img2ImgRequest, {"prompt": prompt, "init_images": init_images, **fields})
            request = pb.GenerateRequest(img2img=body)
        request.preview_every_n_steps = preview_every_n_steps
        images: list[pb.Image] = []
        task_id = ""
        for event in self.events(request, timeout):
            task_id = event.task_id
            kind = event.WhichOneof("event")
            if kind == "progress" and on_progress is not None:
                on_progress(event.progress)
            elif kind == "image":
                images.append(event.image)
            elif kind == "done":
                d = event.done
                return _generation(images, d.info_json, d.parameters, task_id, d.interrupted)
        raise RuntimeError("the Generate stream ended without a Done event")

    # -- control ------------------------------------------------------------------------------------------------

    def interrupt(self, task_id: str | None = None) -> None:
        """Interrupt the running job, or cancel `task_id` (removed if queued, interrupted if running)."""
        self._call(self.stub.Interrupt, pb.InterruptRequest(task_id=task_id))

    def skip(self) -> None:
        self._call(self.stub.Skip, pb.SkipRequest())

    def progress(self, skip_current_image: bool = True) -> pb.GetProgressResponse:
        return self._call(self.stub.GetProgress, pb.GetProgressRequest(skip_current_image=skip_current_image))

    # -- listings and options -----------------------------------------------------------------------------------

    def models(self) -> list[pb.Model]:
        return list(self._call(self.stub.ListModels, pb.ListModelsRequest()).models)

    def samplers(self) -> list[pb.Sampler]:
        return list(self._call(self.stub.ListSamplers, pb.ListSamplersRequest()).samplers)

    def schedulers(self) -> list[pb.Scheduler]:
        return list(self._call(self.stub.ListSchedulers, pb.ListSchedulersRequest()).schedulers)

    def options(self) -> dict[str, Any]:
        return struct_to_python(self._call(self.stub.GetOptions, pb.GetOptionsRequest()).options)

    def set_options(self, options: Mapping[str, Any]) -> None:
        request = pb.SetOptionsRequest()
        request.options.update(dict(options))
        self._call(self.stub.SetOptions, request)

    def png_info(self, image: ImageInput) -> dict[str, Any]:
        r = self._call(self.stub.PngInfo, pb.PngInfoRequest(image=image_bytes(image)))
        return {"info": r.info, "items": struct_to_python(r.items), "parameters": struct_to_python(r.parameters)}

    def health(self, service: str = "") -> str:
        """SERVING once the server has a model loaded, else NOT_SERVING."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
