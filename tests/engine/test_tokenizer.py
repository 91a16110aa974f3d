"""Our CLIP tokenizer against transformers' CLIPTokenizer, the one A1111 uses (with ftfy installed, as there)."""

from pathlib import Path

import pytest
import regex
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tokenizers import Regex
from tokenizers.pre_tokenizers import Split

from engine.tokenizer import ClipTokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("ftfy")


@pytest.fixture(scope="module")
def tokenizers(demo_diffusers_dir: Path):
    folder = demo_diffusers_dir / "tokenizer"
    reference = transformers.CLIPTokenizer.from_pretrained(folder)
    assert reference.fix_text is not None  # ftfy active, as in A1111's environment
    return ClipTokenizer(folder), reference


CASES = [
    "a photo of a cat",
    "A (red:1.3) CAT, [blue] dog!! 1girl, 4k, ultra-detailed",
    "don’t “quoted” text",  # ftfy straightens quotes
    "&amp; html &lt;entity&gt;",  # ftfy unescapes entities (no "<" in the text)
    "ﬁne ligature, ＦＵＬＬＷＩＤＴＨ",
    "café naïve résumé, 日本語のテキスト, emoji 🐱🔥",
    "tab\tnew\nline   spaces\u00a0nbsp  ",
    "<|endoftext|> special <|startoftext|>x&amp;",
    "it's they're we've I'm you'll he'd",
]


@pytest.mark.parametrize("text", CASES)
def test_matches_transformers(tokenizers, text):
    ours, reference = tokenizers
    assert ours.encode(text) == reference(text, add_special_tokens=False)["input_ids"]


ALPHABET = st.sampled_from(list("aB ,.'’“&;<>|sdtmel\t\n()[]:") + ["<|endoftext|>", "&amp;", "ﬁ", "Ａ", "é", "日本", "🐱"])


def unicode_classes_agree(char: str) -> bool:
    """Whether transformers' `regex` and the tokenizers crate's Oniguruma both see `char` as a letter, a digit or
    neither (CLIP's pre-tokenizer pattern splits on these classes)."""
    rust = tuple(not Split(Regex(c), "removed").pre_tokenize_str(char) for c in UNICODE_CLASSES)
    python = tuple(bool(regex.fullmatch(c, char)) for c in UNICODE_CLASSES)
    return rust == python


UNICODE_CLASSES = (r"\p{L}", r"\p{N}")


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs", "Co", "Cn")), max_size=30)
       | st.lists(ALPHABET, max_size=20).map("".join))
def test_matches_transformers_on_arbitrary_text(tokenizers, text):
    # Unassigned and private-use code points are left out, and so is text whose cleaned form (ftfy can make new
    # characters, e.g. "Õ\x98" → "\u0558") holds a character the two regex engines' Unicode tables class
    # differently (docs/compatibility.md).
    ours, reference = tokenizers
    assume(all(unicode_classes_agree(c) for c in set(ours.clean(text))))
    assert ours.encode_batch([text]) == [reference(text, add_special_tokens=False)["input_ids"]]
