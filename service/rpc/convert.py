"""Proto messages ↔ the sdapi wire format: presence kept, image bytes ↔ base64, the `info` JSON typed."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from pydantic import BaseModel

from service.generated import sdedge_pb2 as pb

Model = TypeVar("Model", bound=BaseModel)

_STRUCT = "google.protobuf.Struct"
_LIST = "google.protobuf.ListValue"


def json_number(value: Any) -> Any:
    """Struct stores every number as a double; an integral one goes back to int, as a JSON client sent it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: json_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_number(v) for v in value]
    return value


def struct_to_python(value: Message) -> Any:
    return json_number(json_format.MessageToDict(value))


def python_to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    # A JSON round trip turns what Struct cannot hold (tuples, numpy scalars, ...) into JSON or null first.
    struct.update(json.loads(json.dumps(dict(value), default=lambda _: None)))
    return struct


def _sdapi_value(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None and field.message_type.full_name in (_STRUCT, _LIST):
        return struct_to_python(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        # sdapi image fields are base64 strings; translate.py decodes them as for REST.
        encode = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
        return [encode(v) for v in value] if field.is_repeated else encode(value)
    return list(value) if field.is_repeated else value


def sdapi_fields(message: Message) -> dict[str, Any]:
    """The fields a client set, as sdapi JSON values. Unset fields stay absent, so pydantic gives A1111's default."""
    return {field.name: _sdapi_value(field, value) for field, value in message.ListFields()}


def to_sdapi(message: Message, model: type[Model]) -> Model:
    return model.model_validate(sdapi_fields(message))


def mime_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def generation_info(info: Mapping[str, Any]) -> pb.GenerationInfo:
    return json_format.ParseDict(dict(info), pb.GenerationInfo(), ignore_unknown_fields=True)


def images(response: Mapping[str, Any], info: Mapping[str, Any]) -> list[pb.Image]:
    """Encoded images with the seed and infotext of the generation each one is (extra images get neither)."""
    first = int(info.get("index_of_first_image", 0) or 0)
    seeds, subseeds = info.get("all_seeds") or [], info.get("all_subseeds") or []
    infotexts = info.get("infotexts") or []
    data_list = response.get("images") or []
    sources = response.get("image_sources") or [i - first if i >= first else None for i in range(len(data_list))]
    out = []
    for i, (data, k) in enumerate(zip(data_list, sources, strict=True)):
        image = pb.Image(data=data, mime_type=mime_type(data), index=i)
        # `infotexts`: the grid's first, if any; a script's grid (k < 0) carries its own infotext but no seed.
        if k is not None and 0 <= k + first < len(infotexts):
            image.infotext = infotexts[k + first]
            if k >= 0:
                image.seed = seeds[k] if k < len(seeds) else 0
                image.subseed = subseeds[k] if k < len(subseeds) else 0
        out.append(image)
    return out


def generation_response(response: Mapping[str, Any], task_id: str, interrupted: bool) -> pb.GenerationResponse:
    """The sdapi response dict (images as bytes) as a GenerationResponse."""
    info = json.loads(response["info"])
    typed_info = generation_info(info)
    typed_info.networks.extend(pb.Network(**n) for n in response.get("networks") or ())
    typed_info.embeddings.extend(pb.EmbeddingUse(**e) for e in response.get("embeddings") or ())
    return pb.GenerationResponse(
        images=images(response, info),
        info=typed_info,
        info_json=response["info"],
        parameters=python_to_struct(response.get("parameters") or {}),
        task_id=task_id,
        interrupted=interrupted,
    )
