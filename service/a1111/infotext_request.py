"""The `infotext` request field (A1111 modules/api/api.py: Api.apply_infotext): a pasted infotext fills the
fields a client did not send and
adds the settings it names to `override_settings`, as A1111's `Api.apply_infotext` does. Which label fills which
field or option is service.a1111.infotext_fields.FIELDS, the table the infotext is written from."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from service.a1111.errors import InvalidRequest
from service.a1111.extra_networks import rewrite_pasted_lora_names
from service.a1111.infotext import StyleExtractor, parse_infotext
from service.a1111.infotext_fields import OPTION_LABELS, Params, Paste, paste_fields
from service.a1111.job_options import JobOptions
from service.a1111.sdapi_models import GenerationRequest, Txt2ImgRequest
from service.runtime.options import DEFAULTS

CheckpointTitle = Callable[[str], str | None]
Request = TypeVar("Request", bound=GenerationRequest)


def field_type(model: type[GenerationRequest], name: str) -> type:
    """The type A1111 casts a pasted value to: pydantic v1's `type_`, i.e. the field's type without Optional."""
    annotation = model.model_fields[name].annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return typing.get_origin(annotation) or annotation


def _cast(target: type, value: Any, field: str, source: str) -> Any:
    """`target(value)` unless it already is one; what A1111 cannot cast (a 500 there) is the client's 422."""
    if isinstance(value, target):
        return value
    try:
        return target(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequest(field, f"infotext value {source}: {value!r} is not a valid {target.__name__}") from None


def cast_option(key: str, value: Any, current: Any, defaults: Mapping[str, Any] = DEFAULTS) -> Any:
    """A1111's `Options.cast_value`: to the type of the option's default (else of its current value); for a
    bool only the text "False" is false."""
    default = defaults.get(key)
    if default is None:
        default = current
    if default is None:
        return None
    target = type(default)
    if target is bool and value == "False":
        return False
    try:
        return target(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequest(key, f"infotext value {value!r} is not a valid {target.__name__}") from None


def override_settings(params: Params, options: Mapping[str, Any],
                      defaults: Mapping[str, Any] = DEFAULTS) -> dict[str, Any]:
    """A1111's `get_override_settings`: option → pasted value, for every labelled option whose value differs
    from the current one. `Model hash` counts only when option `disable_weights_auto_swap` is off."""
    res: dict[str, Any] = {}
    typed = JobOptions.of(options)
    for key, label in OPTION_LABELS:
        value = params.get(label)
        if key not in defaults or value is None:
            continue
        if key == "sd_model_checkpoint" and typed.disable_weights_auto_swap:
            continue
        value = cast_option(key, value, options.get(key), defaults)
        if value != options.get(key):
            res[key] = value
    return res


def apply_infotext(req: Request, options: Mapping[str, Any], extract_styles: StyleExtractor | None = None,
                   checkpoint_title: CheckpointTitle | None = None, lora_alias=None) -> Request:
    """The request with its `infotext` applied (A1111 modules/api/api.py: Api.apply_infotext): each mapped
    field the client did not send
    takes the pasted value, cast to the field's type; labelled settings join `override_settings` unless the
    client set that key. `options` are the server's current option values (not this request's overrides);
    `checkpoint_title(name)` finds the checkpoint a pasted `Refiner` names; `lora_alias(shorthash)` the name of
    the LoRA file with that hash (`Lora hashes` renames the prompt's tags)."""
    if not req.infotext:
        return req
    params = parse_infotext(req.infotext, options, extract_styles)
    if lora_alias is not None:
        rewrite_pasted_lora_names(params, lora_alias)
    fields = paste_fields(txt2img=isinstance(req, Txt2ImgRequest))
    if checkpoint_title is not None:
        refiner = params.get("Refiner")
        fields += (Paste("refiner_checkpoint", "Refiner", lambda _: checkpoint_title(str(refiner)) if refiner else None,
                         txt2img=False),)
    model = type(req)
    updates: dict[str, Any] = {}
    for field in fields:
        if field.api in req.model_fields_set:
            continue
        value = field.value(params)
        if value is not None:
            updates[field.api] = _cast(field_type(model, field.api), value, field.api, field.key)
    overrides = dict(req.override_settings or {})
    for key, value in override_settings(params, options).items():
        overrides.setdefault(key, value)
    updates["override_settings"] = overrides
    return req.model_copy(update=updates)
