"""Read a label out of a free-text model reply.

LMMs asked for "exactly one of: mel, nv" still answer ``"**Nevus.**"``, ``"The answer is: nv"``
or ``{"answer": "mel"}``. :func:`parse_label` maps such a reply to one allowed label, or to
:data:`UNPARSED` when it cannot tell. It is deliberately conservative: a reply naming two
different labels is unparsed rather than guessed, and negations ("not melanoma") are not
understood, so they count as naming the label.

Matching works on normalised token sequences: lower-cased, with every run of characters other
than letters and digits treated as one space (so markdown, punctuation, quotes and hyphens vanish:
``"Non-Tumor!"`` -> ``non tumor``). In order:

1. ``<think>...</think>`` blocks are dropped; a JSON object reply is read from its ``answer`` /
   ``label`` / ``prediction`` / ``class`` field;
2. the whole reply equals a label or an alias -> that label;
3. the labels and aliases that occur as whole words -> the label if exactly one distinct label
   occurs (an occurrence inside a longer one, ``tumor`` inside ``non tumor``, does not count);
4. otherwise :data:`UNPARSED`.
"""

from __future__ import annotations

import json
import re

#: What :func:`parse_label` returns when the reply names no allowed label, or several.
UNPARSED = "unparsed"
#: JSON fields read, in this order, when the reply is a JSON object.
ANSWER_KEYS = ("answer", "label", "prediction", "class", "diagnosis")

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.DOTALL)


def normalise(text: str) -> tuple[str, ...]:
    """Lower-case word tokens of ``text``: ``"**Basal-cell** carcinoma."`` -> ``("basal", "cell",
    "carcinoma")``."""
    return tuple(token for token in _NON_WORD.split(text.casefold()) if token)


def _spellings(labels: list[str], aliases: dict[str, str] | None) -> dict[tuple[str, ...], str]:
    """Map each normalised label and alias to its label; refuse ambiguous or empty spellings."""
    spellings: dict[tuple[str, ...], str] = {}
    entries = [(label, label) for label in labels] + list((aliases or {}).items())
    for spelling, label in entries:
        if label not in labels:
            raise ValueError(
                f"alias {spelling!r} points to {label!r}, which is not an allowed label "
                f"({', '.join(labels)})"
            )
        key = normalise(spelling)
        if not key:
            raise ValueError(f"label or alias {spelling!r} has no letters or digits")
        if spellings.get(key, label) != label:
            raise ValueError(
                f"{spelling!r} reads the same as a spelling of {spellings[key]!r} "
                "after normalisation; labels must stay distinguishable"
            )
        spellings[key] = label
    return spellings


def _json_answer(reply: str) -> str | None:
    """The answer field of a JSON-object reply (optionally in a ``` fence), else ``None``."""
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    if not text.startswith(("{", '"')):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, str):
        return data
    if not isinstance(data, dict):
        return None
    fields = {str(key).casefold(): value for key, value in data.items()}
    for key in ANSWER_KEYS:
        if isinstance(fields.get(key), str):
            return str(fields[key])
    return None


def _occurrences(tokens: tuple[str, ...], spelling: tuple[str, ...]) -> list[tuple[int, int]]:
    n = len(spelling)
    return [(i, i + n) for i in range(len(tokens) - n + 1) if tokens[i : i + n] == spelling]


def parse_label(reply: str, labels: list[str], *, aliases: dict[str, str] | None = None) -> str:
    """The one allowed label a reply names, or :data:`UNPARSED`.

    Args:
        reply: the model's raw text.
        labels: the allowed answers, returned exactly as spelled here.
        aliases: other spellings, ``alias -> label`` (e.g. ``{"melanoma": "mel"}``).

    Raises:
        ValueError: an alias points outside ``labels``, or two labels/aliases normalise alike.
    """
    spellings = _spellings(labels, aliases)
    text = _THINK.sub(" ", reply)
    answer = _json_answer(text)
    if answer is not None:
        text = answer
    tokens = normalise(text)
    if not tokens:
        return UNPARSED
    if tokens in spellings:
        return spellings[tokens]
    spans = [
        (start, end, label)
        for spelling, label in spellings.items()
        for start, end in _occurrences(tokens, spelling)
    ]
    found = {
        label
        for start, end, label in spans
        if not any(s <= start and end <= e and (s, e) != (start, end) for s, e, _ in spans)
    }
    return found.pop() if len(found) == 1 else UNPARSED
