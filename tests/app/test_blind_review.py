"""Blind review in the app: a reviewer sees no true label or others' reviews until submitting."""

from __future__ import annotations

from review_seed import ADMIN, REVIEWER, Seeded
from streamlit.testing.v1 import AppTest
from test_pages import _app, _open_case, _texts

from medcl.review import auth, service
from medcl.review.db import Store


def _bob_reviews(seeded: Seeded, case_id: int) -> None:
    store = Store.open(seeded.url, workspace=seeded.root)
    bob = auth.create_user(store, "bob", "bob-password-12")
    service.submit_review(
        store, bob, case_id, decision="reject", comment="bob thinks otherwise", expected_version=0
    )
    store.close()


def _history(at: AppTest) -> list[list[object]]:
    """``[reviewer, decision]`` of each history entry (``**name** · decision ...``), in order."""
    out: list[list[object]] = []
    for m in at.markdown:
        head, sep, rest = m.value.partition("** · ")
        if head.startswith("**") and sep:
            out.append([head[2:], rest.split(" ", 1)[0]])
    return out


def test_reviewer_is_blind_until_submitting(seeded: Seeded) -> None:
    case_id = seeded.case_ids["retrieval"]
    _bob_reviews(seeded, case_id)
    at = _open_case(_app(), case_id)
    assert not at.exception and not at.error
    text = _texts(at)
    assert "**true label**: hidden until you submit your review" in text
    assert "mel" not in [m.value for m in at.metric]
    assert "bob" not in text and _history(at) == []
    assert "Blind review: the ground truth and 1 review(s) by others are hidden" in text
    assert "status **reviewed**" in text  # not bob's 'rejected'
    label = at.selectbox(key=f"review_label_{case_id}")
    assert label.options == ["(none)", "mel", "nv"]  # the class map; no free text field
    assert not at.text_input  # nothing typed
    at.radio(key=f"review_decision_{case_id}").set_value("correct")
    label.set_value("mel")
    next(b for b in at.button if b.label == "Submit review").click()
    at.run()
    assert [s.value for s in at.success] == ["Review saved: correct (case version 2)."]
    at = _open_case(at, case_id)
    text = _texts(at)
    assert "**true label**: mel" in text and "Blind review" not in text
    assert _history(at) == [["alice", "correct"], ["bob", "reject"]]


def test_admin_sees_everything_and_can_switch_blind_review_off(seeded: Seeded) -> None:
    case_id = seeded.case_ids["retrieval"]
    _bob_reviews(seeded, case_id)
    admin = _open_case(_app(ADMIN), case_id)
    assert "**true label**: mel" in _texts(admin) and _history(admin) == [["bob", "reject"]]
    admin.switch_page("app_pages/admin.py").run()
    toggle = admin.toggle(key="admin_blind_review")
    assert toggle.value is True
    toggle.set_value(False).run()
    assert not admin.exception
    assert "Blind review is off." in [s.value for s in admin.success]
    reviewer = _open_case(_app(REVIEWER), case_id)
    assert "**true label**: mel" in _texts(reviewer)
    assert _history(reviewer) == [["bob", "reject"]]
