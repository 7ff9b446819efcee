"""User and pipeline data are shown as text on every page, never as Markdown or HTML (issue 14).

A payload with a link, an image, ``<script>``, raw HTML, bold, italics, a code span and a Streamlit
colour directive is put into every field of the cases (case key, site, model, label, score names,
volume class names, LMM answer, true label, selector, demonstration labels, file names), into a
review (comment, corrected label) by a user whose name is a payload too, and into the ``?case=``
parameter, logged out and logged in. Every Markdown-capable element of every page is then rendered
with a CommonMark renderer that allows raw HTML: no link, image, script, HTML tag, emphasis or code
from the payload may come out.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt
from review_seed import ADMIN, REVIEWER, TILE_NAMES, write_predictions
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Element, Image, Table

from medcl.review import auth, service
from medcl.review.db import Store
from medcl.review.safe_text import WORD_JOINER

APP = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")
P = (
    "**pwnbold** _pwnital_ [pwnlink](http://evil.example/reset) "
    "![pwnimg](http://127.0.0.1:9/x) <script>alert(1)</script> <b>pwnhtml</b> "
    ":red[pwnred] `pwncode` www.evil.example a@evil.example"
)
USER_P = "**pwnuser**[l](http://e.x)<script>"  # a username: no spaces, at most 64 characters
USER_PASSWORD = "payload-password-1"
TILE = "tile_**pwnbold**_[x](y).png"
_MD = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
# what the payload would produce if it were rendered: none of this may appear
_FORBIDDEN = re.compile(
    r"<a |<img|<script|<b>|<strong>pwn|<em>pwn|<code>pwn|<del>|href=|src=", re.IGNORECASE
)
# GitHub's autolink literals, found in the rendered text (Streamlit's renderer links them)
_AUTOLINK = re.compile(r"(?i)(?<![a-z0-9])(https?://|www\.)|[-.\w+]+@[-\w]+(?:\.[-\w]+)+")
_MARKDOWN_TYPES = {
    "markdown",
    "caption",
    "title",
    "header",
    "subheader",
    "error",
    "warning",
    "info",
    "success",
    "metric",
}


def _payload_predictions(root: Path) -> Path:
    """The seed's three cases (with real artifacts) with a payload in every text field."""
    path = write_predictions(root)
    art = root / "artifacts"
    (art / TILE).write_bytes((art / TILE_NAMES[0]).read_bytes())
    rows = []
    for row in map(json.loads, path.read_text().splitlines()):
        row.update(
            case_key=f"{row['kind']} {P}",
            site=P,
            model=P,
            model_version=P,
            label=P,
            scores={P: 0.6, "other": 0.4},
            model_card={  # every text of the model card is a payload too
                "display_name": P[:120],  # the longest name a card may have
                "trained_on": P,
                "intended_use": P,
                "research_only": True,
                "uncertainty": P,
            },
        )
        a = row["artifacts"]
        if row["kind"] == "volume":
            a["labels"] = {"1": P}
        elif row["kind"] == "slide":
            a["top_tiles"] = [f"artifacts/{TILE}"]
            a["heatmap_score"] = P
        else:
            a.update(lmm_answer=P, true_label=P, selector=P)
            for d in a["demonstrations"]:
                d.update(label=P, domain=P)
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def payload_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path / 'review.db'}"
    store = Store.open(url, workspace=tmp_path)
    auth.create_user(store, *REVIEWER)
    auth.create_user(store, *ADMIN, role="admin")
    evil = auth.create_user(store, USER_P, USER_PASSWORD)
    result = service.import_predictions(store, None, _payload_predictions(tmp_path))
    assert result.created == 3 and not result.errors, result
    ids = {c.kind: c.id for c in service.list_cases(store, evil).items}
    for case_id in ids.values():  # a review whose every text field is a payload
        service.submit_review(
            store,
            evil,
            case_id,
            decision="correct",
            corrected_label=P,
            comment=P,
            expected_version=0,
        )
    # the payload review must show in alice's history (blind review would hide it from her)
    service.set_blind_review(store, auth.system_user(), False)
    store.close()
    monkeypatch.setenv("MEDCL_REVIEW_DB", url)
    monkeypatch.setenv("MEDCL_WORKSPACE", str(tmp_path))
    return {"ids": ids}


def _sources(at: AppTest) -> list[str]:
    """The text of every Markdown-capable part of the page (bodies, labels, captions, cells)."""
    out: list[str] = []
    for node in at._tree:
        if not isinstance(node, Element):  # containers: their labels are fixed texts
            continue
        proto = node.proto
        if node.type in _MARKDOWN_TYPES:
            out.append(str(node.value))
        if isinstance(node, Image):
            out += node.captions
        elif isinstance(node, Table):
            df = node.value
            out += [str(c) for c in df.columns]
            out += [str(v) for v in df.to_numpy().ravel()]
        label = getattr(proto, "label", None)
        if isinstance(label, str):
            out.append(label)
    return out


def _check(at: AppTest, where: str) -> list[str]:
    assert not at.exception, (where, [e.value for e in at.exception])
    sources = _sources(at)
    for source in sources:
        rendered = _MD.render(source)
        assert not _FORBIDDEN.search(rendered), (where, source, rendered)
        text = html.unescape(re.sub(r"<[^>]+>", "", rendered))
        assert not _AUTOLINK.search(text), (where, source, text)
        for raw in ("**pwn", "](http", "<script", "<b>", "`pwncode`", ":red["):
            assert raw not in source, (where, source)
    return sources


def _shown(source: str) -> str:
    """What a reader sees of ``source``: rendered, tags dropped, character references decoded,
    invisible word joiners (which break autolinks) dropped."""
    text = html.unescape(re.sub(r"<[^>]+>", "", _MD.render(source))).strip()
    return text.replace(WORD_JOINER, "")


def _login(at: AppTest, user: str, password: str) -> AppTest:
    at.text_input(key="login_username").set_value(user)
    at.text_input(key="login_password").set_value(password)
    at.button[0].click()
    return at.run()


def test_logged_out_case_parameter_is_text(payload_store: dict[str, Any]) -> None:
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["case"] = P
    at.run()
    sources = _check(at, "login page")
    assert f"Log in to open case {P}." in [_shown(s) for s in sources]


def test_every_page_shows_payloads_as_text(payload_store: dict[str, Any]) -> None:
    at = _login(AppTest.from_file(APP, default_timeout=30).run(), *REVIEWER)
    assert at.title[0].value == "Worklist"
    sources = _check(at, "worklist")
    keys = {f"{kind} {P}" for kind in ("slide", "volume", "retrieval")}
    assert keys <= {_shown(s) for s in sources}  # the keys are shown, literally
    for kind, case_id in payload_store["ids"].items():
        at.query_params["case"] = str(case_id)
        at.switch_page("app_pages/case.py").run()
        sources = _check(at, f"{kind} case")
        shown = [_shown(s) for s in sources]
        assert _shown(at.title[0].value) == f"{kind} {P}"
        assert P in shown  # the label metric, the review table's comment and corrected label
        assert any(s.startswith(f"{USER_P} · correct") for s in shown)  # history: the reviewer
        assert not at.error, [e.value for e in at.error]
        if kind == "retrieval":
            assert any(f"LMM answer: {P}" in s for s in shown)
        if kind == "volume":
            assert any(_shown(c.label) == P for c in at.checkbox)
        if kind == "slide":
            assert f"{TILE} (no position recorded)" in shown
    at.query_params["case"] = P  # not a case id
    at.switch_page("app_pages/case.py").run()
    sources = _check(at, "case page, bad id")
    assert f"'{P}' is not a case id." in [_shown(s) for s in sources]


def test_admin_pages_and_payload_user_show_text(payload_store: dict[str, Any]) -> None:
    at = _login(AppTest.from_file(APP, default_timeout=30).run(), *ADMIN)
    at.switch_page("app_pages/admin.py").run()
    _check(at, "admin")
    at.text_input(key="admin_new_username").set_value("**pwnnew**")
    at.text_input(key="admin_new_password").set_value("new-password-1")
    next(b for b in at.button if b.label == "Add user").click()
    at.run()
    sources = _check(at, "admin, user added")
    assert "User **pwnnew** added." in [_shown(s) for s in sources]
    at.switch_page("app_pages/status.py").run()
    _check(at, "status")
    evil = _login(AppTest.from_file(APP, default_timeout=30).run(), USER_P, USER_PASSWORD)
    sources = _check(evil, "worklist of the payload user")
    assert f"Signed in as {USER_P} (reviewer)" in [_shown(s) for s in sources]
