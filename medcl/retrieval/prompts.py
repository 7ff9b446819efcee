"""In-context-learning prompts for large multimodal models (LMMs).

An *episode* is k labelled demonstrations and one query image (InvariantSelectPR, "Adapting Large
Multimodal Models to Distribution Shifts: The Role of In-Context Learning", 2024).
:func:`build_messages` writes it in the OpenAI-compatible chat format served by vLLM, Ollama,
LM Studio, llama.cpp and hosted APIs: a system turn with the instruction, then one user turn
(image + question) and one assistant turn (the label) per demonstration, then the query turn::

    system     "You are classifying medical images ... Allowed answers: mel, nv."
    user       [image_url demo 1, "What is the label of this image?"]
    assistant  "mel"
    ...
    user       [image_url query, "What is the label of this image? Answer with exactly one of: ..."]

Images travel inline as ``data:image/jpeg;base64,...`` URLs, downscaled so their longest side is
at most ``image_max_side`` and encoded once per (file, mtime, size, settings); the last 1024
encodings are kept in memory.
:func:`episode_json` writes the same episode as plain JSON (paths, not pixels) for other models.
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from medcl.errors import InvalidInputError

log = logging.getLogger(__name__)

#: Encodings an image may be sent in, and their MIME types.
IMAGE_FORMATS: dict[str, str] = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
#: The question asked with every image (demonstrations and query alike).
QUESTION = "What is the label of this image?"
_JPEG_QUALITY = 90


@dataclass(frozen=True)
class Demonstration:
    """One labelled example shown to the model before the query.

    Args:
        image_path: the example's image file.
        label: its label, one of the episode's allowed answers.
        similarity: the retrieval score that selected it (kept in :func:`episode_json` only).
        domain: the hospital / site it comes from (kept in :func:`episode_json` only).
    """

    image_path: Path
    label: str
    similarity: float | None = None
    domain: str | None = None


def answer_hint(labels: list[str]) -> str:
    """The closing sentence of the query turn: ``"Answer with exactly one of: a, b, c."``."""
    return f"Answer with exactly one of: {', '.join(labels)}."


def default_instruction(labels: list[str], label_descriptions: dict[str, str] | None = None) -> str:
    """The system instruction naming the task and the allowed answers (and what each one means)."""
    text = (
        "You are an expert in medical image classification. You will see example images with "
        "their correct labels, then a new image. Reply with the label of the new image only, "
        f"no explanation. Allowed answers: {', '.join(labels)}."
    )
    if label_descriptions:
        lines = [
            f"- {label}: {label_descriptions[label]}"
            for label in labels
            if label in label_descriptions
        ]
        text += "\nMeaning of the labels:\n" + "\n".join(lines)
    return text


def image_data_url(path: Path, *, max_side: int = 512, image_format: str = "jpeg") -> str:
    """Read an image, convert it to RGB, shrink it and return it as a ``data:`` URL.

    The longest side is scaled down to ``max_side`` (aspect ratio kept, never upscaled). The result
    is cached by (path, mtime, size, max_side, image_format): an unchanged file is encoded once.

    Raises:
        InvalidInputError: the file is missing or is not an image PIL can read.
        ValueError: ``max_side < 1`` or an unknown ``image_format``.
    """
    if max_side < 1:
        raise ValueError(f"image_max_side must be >= 1, got {max_side}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(
            f"unknown image_format {image_format!r}; valid: {', '.join(sorted(IMAGE_FORMATS))}"
        )
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        problem = "file not found" if isinstance(exc, FileNotFoundError) else "cannot read image"
        raise InvalidInputError(path, problem) from exc
    try:
        return _encode(str(path.resolve()), stat.st_mtime_ns, stat.st_size, max_side, image_format)
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(path, f"image too large to decode safely ({exc})") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInputError(path, "not a readable image") from exc


@lru_cache(maxsize=1024)  # ~50 MB of 512 px JPEGs at most
def _encode(path: str, mtime_ns: int, size: int, max_side: int, image_format: str) -> str:
    """Encode one file; ``mtime_ns`` and ``size`` only key the cache. Errors are not cached."""
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    width, height = rgb.size
    if max(width, height) > max_side:
        scale = max_side / max(width, height)
        new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = rgb.resize(new_size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": _JPEG_QUALITY} if image_format == "jpeg" else {}
    rgb.save(buffer, format=image_format.upper(), **options)
    log.debug("encoded %s as %s %dx%d", path, image_format, *rgb.size)
    payload = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:{IMAGE_FORMATS[image_format]};base64,{payload}"


def _check_episode(labels: list[str], demos: list[Demonstration]) -> None:
    if not labels:
        raise ValueError("labels must name at least one allowed answer")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels contain duplicates: {labels}")
    for demo in demos:
        if demo.label not in labels:
            raise ValueError(
                f"demonstration {demo.image_path} has label {demo.label!r}, "
                f"which is not an allowed answer ({', '.join(labels)})"
            )


def _image_turn(url: str, text: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": text},
        ],
    }


def build_messages(
    query_image: Path,
    demos: list[Demonstration],
    *,
    labels: list[str],
    instruction: str | None = None,
    label_descriptions: dict[str, str] | None = None,
    image_max_side: int = 512,
    image_format: str = "jpeg",
) -> list[dict[str, Any]]:
    """Write a few-shot episode as OpenAI-compatible chat messages.

    Args:
        query_image: the image to classify.
        demos: the k demonstrations, in the order they are shown (k = 0 gives zero-shot).
        labels: the allowed answers; every demonstration's label must be one of them.
        instruction: the system message; default :func:`default_instruction`.
        label_descriptions: optional ``label -> meaning``, added to the default instruction.
        image_max_side: longest image side in pixels after downscaling.
        image_format: ``"jpeg"`` (default), ``"png"`` or ``"webp"``.

    Returns:
        ``1 + 2k + 1`` messages: system, (user, assistant) per demonstration, query user turn.

    Raises:
        InvalidInputError: an image cannot be read (the message names the file).
        ValueError: empty or duplicate labels, or a demonstration label outside ``labels``.
    """
    _check_episode(labels, demos)
    system = (
        instruction if instruction is not None else default_instruction(labels, label_descriptions)
    )
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for demo in demos:
        url = image_data_url(demo.image_path, max_side=image_max_side, image_format=image_format)
        messages.append(_image_turn(url, QUESTION))
        messages.append({"role": "assistant", "content": demo.label})
    url = image_data_url(query_image, max_side=image_max_side, image_format=image_format)
    messages.append(_image_turn(url, f"{QUESTION} {answer_hint(labels)}"))
    return messages


def build_zero_shot_messages(
    query_image: Path,
    *,
    labels: list[str],
    instruction: str | None = None,
    label_descriptions: dict[str, str] | None = None,
    image_max_side: int = 512,
    image_format: str = "jpeg",
) -> list[dict[str, Any]]:
    """The zero-shot variant of :func:`build_messages`: system turn and query turn only."""
    return build_messages(
        query_image,
        [],
        labels=labels,
        instruction=instruction,
        label_descriptions=label_descriptions,
        image_max_side=image_max_side,
        image_format=image_format,
    )


def episode_json(
    query_image: Path,
    demos: list[Demonstration],
    *,
    labels: list[str],
    instruction: str | None = None,
    label_descriptions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The episode of :func:`build_messages` as plain JSON-serialisable data (paths, not pixels).

    Returns:
        ``{"mode": "few-shot" | "zero-shot", "instruction", "allowed_answers",
        "label_descriptions", "demonstrations": [{"image_path", "label", "similarity",
        "domain", "question", "answer"}], "query": {"image_path", "question"}}``.
    """
    _check_episode(labels, demos)
    system = (
        instruction if instruction is not None else default_instruction(labels, label_descriptions)
    )
    return {
        "mode": "few-shot" if demos else "zero-shot",
        "instruction": system,
        "allowed_answers": list(labels),
        "label_descriptions": dict(label_descriptions) if label_descriptions else None,
        "demonstrations": [
            {
                "image_path": str(demo.image_path),
                "label": demo.label,
                "similarity": demo.similarity,
                "domain": demo.domain,
                "question": QUESTION,
                "answer": demo.label,
            }
            for demo in demos
        ],
        "query": {"image_path": str(query_image), "question": f"{QUESTION} {answer_hint(labels)}"},
    }
