"""The review form of a case and its history (used by the case page, not a page itself).

The form is submitted through a callback bound to the case version that was on screen, so a
review entered while someone else reviewed the same case raises ``ConflictError`` instead of
silently overwriting it; the other review is then shown next to the form (unless the reviewer
reviews blind: then only that a review was saved).

A corrected label is picked from the case's allowed labels (the model's class map plus labels an
admin added), never typed. What the reviewer may see (blind review) is decided by the service.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from medcl.review import service
from medcl.review.auth import UserInfo
from medcl.review.db import Store
from medcl.review.errors import ConflictError, ReviewError
from medcl.review.history import history_entries
from medcl.review.safe_text import plain
from medcl.review.service import CaseDetail, ReviewInfo

DECISIONS = ("accept", "reject", "correct")
NOT_GIVEN = "not given"
NO_LABEL = "(none)"


def label_options(detail: CaseDetail) -> list[str]:
    """The corrected-label choices: none, then the allowed labels the service computed."""
    return [NO_LABEL, *detail.allowed_labels]


def blind_notice(detail: CaseDetail) -> str | None:
    """What the form says while the case is shown blind (``None`` when it is not)."""
    if not detail.blind:
        return None
    others = (
        f" and {detail.hidden_reviews} review(s) by others are"
        if detail.hidden_reviews
        else " and any reviews by others are"
    )
    return f"Blind review: the ground truth{others} hidden until you submit your review."


def review_rows(reviews: list[ReviewInfo]) -> list[dict[str, Any]]:
    """Rows of the review tables (``st.table`` renders Markdown: text cells are escaped)."""
    return [
        {
            "time": str(r.created)[:19],
            "reviewer": plain(r.reviewer),
            "decision": plain(r.decision),
            "corrected label": plain(r.corrected_label),
            "confidence": r.confidence,
            "comment": plain(r.comment),
            "version": r.case_version,
        }
        for r in reviews
    ]


def _submit(store: Store, user: UserInfo, case_id: int, shown_version: int) -> None:
    state = st.session_state
    picked = state.get(f"review_label_{case_id}", NO_LABEL)
    label = None if picked == NO_LABEL else str(picked)
    confidence = state.get(f"review_confidence_{case_id}", NOT_GIVEN)
    state.pop(f"review_conflict_{case_id}", None)
    try:
        saved = service.submit_review(
            store,
            user,
            case_id,
            decision=state.get(f"review_decision_{case_id}", "accept"),
            corrected_label=label,
            comment=str(state.get(f"review_comment_{case_id}", "")),
            confidence=None if confidence == NOT_GIVEN else int(confidence),
            expected_version=shown_version,
        )
    except ConflictError as exc:
        other = exc.current.reviews[:1]
        state[f"review_conflict_{case_id}"] = (str(exc), review_rows(other))
    except ReviewError as exc:
        state[f"review_message_{case_id}"] = ("error", plain(exc))
    else:
        state[f"review_message_{case_id}"] = (
            "success",
            f"Review saved: {saved.decision} (case version {saved.case_version + 1}).",
        )
        state[f"review_comment_{case_id}"] = ""


def render(store: Store, user: UserInfo, detail: CaseDetail) -> None:
    """Draw the form (decision, corrected label, comment, confidence) and the history."""
    case_id = detail.summary.id
    st.subheader("Your review")
    notice = blind_notice(detail)
    if notice is not None:
        st.info(notice)
    conflict = st.session_state.get(f"review_conflict_{case_id}")
    if conflict is not None:
        message, other = conflict
        st.error(plain(message))
        if other:
            st.caption("The review saved meanwhile:")
            st.table(other, hide_index=True)
        st.caption("Your entries are kept below; submit again to add your review on top.")
    message = st.session_state.pop(f"review_message_{case_id}", None)
    if message is not None:
        (st.success if message[0] == "success" else st.error)(message[1])  # already Markdown
    with st.form(f"review_form_{case_id}"):
        st.radio("Decision", DECISIONS, key=f"review_decision_{case_id}", horizontal=True)
        st.selectbox(
            "Corrected label",
            label_options(detail),
            key=f"review_label_{case_id}",
            help="Used when the decision is 'correct': the model's classes and the labels an "
            "admin added.",
        )
        st.text_area("Comment", key=f"review_comment_{case_id}")
        st.select_slider(
            "Confidence", [NOT_GIVEN, 1, 2, 3, 4, 5], key=f"review_confidence_{case_id}"
        )
        st.form_submit_button(
            "Submit review",
            type="primary",
            on_click=_submit,
            args=(store, user, case_id, detail.version),
        )
    st.subheader("History")
    if detail.reviews:
        render_history(detail.reviews)
    elif detail.blind:
        st.caption("Hidden until you submit your review.")
    else:
        st.caption("No review yet.")


def render_history(reviews: list[ReviewInfo]) -> None:
    """One bordered entry per review, newest first, with its comment in full (wrapped text)."""
    for entry in history_entries(reviews):
        with st.container(border=True):
            st.markdown(f"**{plain(entry.reviewer)}** · {plain(entry.summary)}")
            if entry.comment:
                st.text(entry.comment, width="stretch")
