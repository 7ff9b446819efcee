"""In-context prompts: message layout, image encoding and caching, episode JSON, label parsing."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcl.errors import InvalidInputError
from medcl.retrieval import prompts
from medcl.retrieval.parse import UNPARSED, normalise, parse_label
from medcl.retrieval.prompts import (
    Demonstration,
    build_messages,
    build_zero_shot_messages,
    episode_json,
    image_data_url,
)

LABELS = ["mel", "nv"]


def _save(path: Path, size: tuple[int, int], color: tuple[int, ...], mode: str = "RGB") -> Path:
    Image.new(mode, size, color).save(path)
    return path


def _decode(url: str, mime: str = "image/jpeg") -> Image.Image:
    prefix = f"data:{mime};base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    return {
        "q": _save(tmp_path / "q.png", (40, 20), (200, 10, 10)),
        "a": _save(tmp_path / "a.png", (8, 16), (10, 200, 10)),
        "b": _save(tmp_path / "b.png", (6, 6), (10, 10, 200)),
    }


def test_build_messages_is_the_few_shot_chat_layout(images: dict[str, Path]) -> None:
    demos = [Demonstration(images["a"], "mel", 0.9, "site1"), Demonstration(images["b"], "nv")]
    msgs = build_messages(images["q"], demos, labels=LABELS, instruction="Classify.")

    def turn(path: Path, text: str) -> dict[str, object]:
        url = image_data_url(path)
        return {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": text},
            ],
        }

    q = "What is the label of this image?"
    assert msgs == [
        {"role": "system", "content": "Classify."},
        turn(images["a"], q),
        {"role": "assistant", "content": "mel"},
        turn(images["b"], q),
        {"role": "assistant", "content": "nv"},
        turn(images["q"], q + " Answer with exactly one of: mel, nv."),
    ]
    json.dumps(msgs)  # plain JSON, ready for the request body


def test_images_are_rgb_jpeg_downscaled_to_max_side(images: dict[str, Path]) -> None:
    msgs = build_messages(images["q"], [], labels=LABELS, image_max_side=10)
    img = _decode(msgs[-1]["content"][0]["image_url"]["url"])
    assert img.format == "JPEG" and img.mode == "RGB" and img.size == (10, 5)  # 40x20 -> 10x5
    assert np.abs(np.asarray(img, dtype=float) - [200, 10, 10]).max() < 8
    small = _decode(image_data_url(images["b"], max_side=10))
    assert small.size == (6, 6)  # never upscaled


def test_png_keeps_exact_pixels_of_grey_and_rgba_inputs(tmp_path: Path) -> None:
    grey = _save(tmp_path / "g.png", (3, 2), (77,), mode="L")
    rgba = _save(tmp_path / "r.png", (2, 2), (1, 2, 3, 128), mode="RGBA")
    g = _decode(image_data_url(grey, image_format="png"), "image/png")
    assert g.mode == "RGB" and (np.asarray(g) == 77).all()
    r = _decode(image_data_url(rgba, image_format="png"), "image/png")
    assert (np.asarray(r) == [1, 2, 3]).all()


def test_encoding_is_cached_by_path_mtime_and_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open = prompts.Image.open

    def counting_open(fp: str) -> Image.Image:
        opened.append(fp)
        return real_open(fp)

    monkeypatch.setattr(prompts.Image, "open", counting_open)
    path = _save(tmp_path / "c.png", (5, 5), (1, 2, 3))
    first = image_data_url(path)
    assert image_data_url(path) == first and len(opened) == 1
    build_messages(path, [Demonstration(path, "mel")], labels=LABELS)
    assert len(opened) == 1  # query and demonstration reuse the cached encoding
    _save(path, (7, 5), (250, 250, 250))  # new size -> new key
    second = image_data_url(path)
    assert second != first and len(opened) == 2
    image_data_url(path, max_side=3)  # other settings -> other entry
    assert len(opened) == 3


def test_unreadable_images_name_the_file(tmp_path: Path, images: dict[str, Path]) -> None:
    missing = tmp_path / "missing.png"
    with pytest.raises(InvalidInputError) as err:
        build_messages(missing, [], labels=LABELS)
    assert str(err.value) == f"{missing}: file not found"
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(InvalidInputError) as err:
        build_messages(images["q"], [Demonstration(garbage, "nv")], labels=LABELS)
    assert str(err.value) == f"{garbage}: not a readable image"
    assert err.value.path == str(garbage)


def test_default_instruction_names_answers_and_descriptions(images: dict[str, Path]) -> None:
    msgs = build_messages(
        images["q"], [], labels=LABELS, label_descriptions={"mel": "melanoma", "nv": "nevus"}
    )
    system = msgs[0]["content"]
    assert "Allowed answers: mel, nv." in system
    assert system.endswith("Meaning of the labels:\n- mel: melanoma\n- nv: nevus")
    plain = build_messages(images["q"], [], labels=["a", "b", "c"])[0]["content"]
    assert "Allowed answers: a, b, c." in plain and "Meaning" not in plain


def test_zero_shot_is_system_and_query_only(images: dict[str, Path]) -> None:
    zero = build_zero_shot_messages(images["q"], labels=LABELS)
    assert [m["role"] for m in zero] == ["system", "user"]
    assert zero == build_messages(images["q"], [], labels=LABELS)


def test_bad_episodes_are_refused(images: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="at least one allowed answer"):
        build_messages(images["q"], [], labels=[])
    with pytest.raises(ValueError, match="duplicates"):
        build_messages(images["q"], [], labels=["a", "a"])
    bad = Demonstration(images["a"], "bcc")
    with pytest.raises(ValueError) as err:
        build_messages(images["q"], [bad], labels=LABELS)
    assert str(err.value) == (
        f"demonstration {images['a']} has label 'bcc', which is not an allowed answer (mel, nv)"
    )
    with pytest.raises(ValueError, match="unknown image_format 'gif'; valid: jpeg, png, webp"):
        image_data_url(images["q"], image_format="gif")
    with pytest.raises(ValueError, match="image_max_side must be >= 1, got 0"):
        image_data_url(images["q"], max_side=0)


def test_episode_json_holds_the_same_episode(images: dict[str, Path]) -> None:
    demos = [Demonstration(images["a"], "mel", 0.75, "site1"), Demonstration(images["b"], "nv")]
    ep = episode_json(images["q"], demos, labels=LABELS, instruction="Classify.")
    q = "What is the label of this image?"
    assert ep == {
        "mode": "few-shot",
        "instruction": "Classify.",
        "allowed_answers": ["mel", "nv"],
        "label_descriptions": None,
        "demonstrations": [
            {"image_path": str(images["a"]), "label": "mel", "similarity": 0.75,
             "domain": "site1", "question": q, "answer": "mel"},
            {"image_path": str(images["b"]), "label": "nv", "similarity": None,
             "domain": None, "question": q, "answer": "nv"},
        ],
        "query": {"image_path": str(images["q"]),
                  "question": q + " Answer with exactly one of: mel, nv."},
    }  # fmt: skip
    assert json.loads(json.dumps(ep)) == ep
    msgs = build_messages(images["q"], demos, labels=LABELS, instruction="Classify.")
    assert ep["query"]["question"] == msgs[-1]["content"][1]["text"]
    zero = episode_json(images["q"], [], labels=LABELS)
    assert zero["mode"] == "zero-shot" and zero["demonstrations"] == []
    assert zero["instruction"] == build_zero_shot_messages(images["q"], labels=LABELS)[0]["content"]


# ---- parse_label -------------------------------------------------------------------------


def test_normalise_drops_case_markdown_and_punctuation() -> None:
    assert normalise("**Basal-cell** carcinoma.") == ("basal", "cell", "carcinoma")
    assert normalise("  `NV`!  ") == ("nv",)
    assert normalise("...") == ()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("mel", "mel"),
        ("MEL", "mel"),
        ("  nv.\n", "nv"),
        ("**nv**", "nv"),
        ("`mel`", "mel"),
        ("# Mel", "mel"),
        ("The answer is: nv.", "nv"),
        ("Answer: **MEL**", "mel"),
        ('{"answer": "mel"}', "mel"),
        ('```json\n{"Answer": "nv", "confidence": 0.9}\n```', "nv"),
        ('{"label": "nv", "reason": "unlike mel, it is symmetric"}', "nv"),
        ('{"result": "mel"}', "mel"),  # unknown key: the whole text still names one label
        ('"nv"', "nv"),
        ("<think>mel or nv? Symmetric, so nv.</think>nv", "nv"),
        ("", UNPARSED),
        ("   ", UNPARSED),
        ("I cannot tell.", UNPARSED),
        ("mel or nv", UNPARSED),  # two labels
        ("It is not mel, it is nv.", UNPARSED),
        ("melanocytic", UNPARSED),  # not a whole word
        ("nvmel", UNPARSED),
        ("%%%$#@!", UNPARSED),
        ("{not json", UNPARSED),
        ('{"answer": 3}', UNPARSED),
        ("mel mel mel", "mel"),  # the same label twice is still one label
    ],
)
def test_parse_label(reply: str, expected: str) -> None:
    assert parse_label(reply, LABELS) == expected


def test_parse_label_aliases_and_original_spelling() -> None:
    labels = ["Melanoma", "Nevus"]
    assert parse_label("The answer is: Nevus.", labels) == "Nevus"
    assert parse_label("melanoma", labels) == "Melanoma"
    aliases = {"melanoma": "mel", "naevus": "nv", "nevus": "nv"}
    assert parse_label("Melanoma.", LABELS, aliases=aliases) == "mel"
    assert parse_label("This looks like a benign naevus", LABELS, aliases=aliases) == "nv"
    assert parse_label("melanoma (mel)", LABELS, aliases=aliases) == "mel"  # same label twice
    assert parse_label("melanoma or nevus", LABELS, aliases=aliases) == UNPARSED


def test_parse_label_prefers_the_longer_overlapping_label() -> None:
    labels = ["tumor", "non-tumor", "basal cell carcinoma", "carcinoma in situ"]
    assert parse_label("Non-Tumor", labels) == "non-tumor"
    assert parse_label("This tile is non tumor tissue.", labels) == "non-tumor"
    assert parse_label("Tumor present.", labels) == "tumor"
    assert parse_label("**Basal cell carcinoma**", labels) == "basal cell carcinoma"
    assert parse_label("tumor, not non-tumor", labels) == UNPARSED


def test_parse_label_refuses_bad_label_sets() -> None:
    with pytest.raises(ValueError) as err:
        parse_label("x", LABELS, aliases={"melanoma": "bcc"})
    assert (
        str(err.value)
        == "alias 'melanoma' points to 'bcc', which is not an allowed label (mel, nv)"
    )
    with pytest.raises(ValueError, match="reads the same as a spelling of 'non-tumor'"):
        parse_label("x", ["non-tumor", "Non Tumor"])
    with pytest.raises(ValueError, match="has no letters or digits"):
        parse_label("x", ["?"])
