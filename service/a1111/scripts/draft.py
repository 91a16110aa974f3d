"""A sub-request under construction: the script's `copy(p)` with attributes set (A1111 scripts assign p's
fields and `p.override_settings` entries), validated back into a request model when done."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from service.a1111.errors import InvalidRequest
from service.a1111.sdapi_models import GenerationRequest


class Draft:
    def __init__(self, req: GenerationRequest):
        self.kind = type(req)
        self.fields: dict[str, Any] = req.model_dump()
        self.overrides: dict[str, Any] = dict(self.fields.get("override_settings") or {})
        # The sub-request runs the plain pipeline: no script again, the pasted infotext already applied.
        self.fields.update(script_name=None, script_args=[], infotext=None)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.fields[key] = value

    def build(self, script: str) -> GenerationRequest:
        fields = dict(self.fields, override_settings=self.overrides or None)
        try:
            return self.kind.model_validate(fields)
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise InvalidRequest("script_args", f"{script} makes an invalid request: {errors}") from None


def derive(req: GenerationRequest, script: str, **fields: Any) -> GenerationRequest:
    draft = Draft(req)
    for key, value in fields.items():
        draft[key] = value
    return draft.build(script)
