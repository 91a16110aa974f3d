"""Request → plan: styles, prompt comments, extra-network tags and prompt options reach the plan (and so the
encoded text and the infotext)."""

from __future__ import annotations

from service.a1111.sdapi_models import Txt2ImgRequest
from service.a1111.styles import StyleDatabase
from service.a1111.translate import plan_txt2img
from service.runtime.options import DEFAULTS


def test_styles_comments_and_tags(tmp_path):
    styles_file = tmp_path / "styles.csv"
    styles_file.write_text('name,prompt,negative_prompt\nphoto,"a photo of {prompt}",blurry\nsharp,sharp,\n')
    styles = StyleDatabase([styles_file])
    # Styles first, then comments (A1111's order): a comment on the last line would swallow an appended style.
    req = Txt2ImgRequest(prompt="a cat <lora:detail:0.8> # a comment\nred", negative_prompt="ugly",
                         styles=["photo", "sharp", "missing"], steps=2, width=64, height=64)
    plan = plan_txt2img(req, DEFAULTS, styles=styles)
    assert "# a comment" not in plan.prompts[0]
    assert plan.prompts[0].startswith("a photo of a cat <lora:detail:0.8>")
    assert plan.prompts[0].endswith("\nred, sharp")
    assert plan.negative_prompts[0] == "ugly, blurry"
    assert [(t.kind, t.name) for t in plan.extra_networks] == [("lora", "detail")]


def test_prompt_options_reach_the_plan():
    options = dict(DEFAULTS, emphasis="No norm", comma_padding_backtrack=5, use_old_scheduling=True,
                   always_discard_next_to_last_sigma=True)
    req = Txt2ImgRequest(prompt="(a:1.2)", steps=4, width=64, height=64, sampler_name="Euler")
    plan = plan_txt2img(req, options)
    assert plan.emphasis == "No norm" and plan.comma_padding_backtrack == 5 and plan.use_old_scheduling
    assert plan.sampler_settings.always_discard_next_to_last_sigma


def test_infotext_sampling_entries():
    from service.a1111.infotext import create_infotext, generation_parameters, parse_infotext

    options = dict(DEFAULTS, emphasis="No norm", eta_ancestral=0.5)
    req = Txt2ImgRequest(prompt="(a:1.2)", steps=4, width=64, height=64, sampler_name="Euler a")
    plan = plan_txt2img(req, options)
    parsed = parse_infotext(create_infotext(plan.prompts[0], "", generation_parameters(plan, 0, "m", "h")))
    assert parsed["Eta"] == "0.5" and parsed["Emphasis"] == "No norm"
    plain = plan_txt2img(Txt2ImgRequest(prompt="a", steps=4, width=64, height=64, sampler_name="Euler a"),
                         DEFAULTS)
    text = create_infotext("a", "", generation_parameters(plain, 0, "m", "h"))
    assert "Eta" not in text and "Emphasis" not in text and "Sigma" not in text


def test_registry_skips_exports_in_progress(demo_bundle, tmp_path):
    import shutil

    from service.runtime.models import ModelRegistry

    shutil.copytree(demo_bundle, tmp_path / ".sdedge-tiny.tmp-123")  # an export killed before its rename
    shutil.copytree(demo_bundle, tmp_path / "complete")
    assert [e.path.name for e in ModelRegistry(tmp_path).entries()] == ["complete"]
