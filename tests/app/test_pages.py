"""The review app's pages driven through Streamlit's AppTest (no browser)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from review_seed import ADMIN, CASE_KEYS, REVIEWER, SLIDE_CARD, TILE_NAMES, TILE_SIDE, Seeded
from streamlit.testing.v1 import AppTest

from medcl.review import auth, service
from medcl.review.auth import UserInfo
from medcl.review.db import Store
from medcl.review.safe_text import plain

APP_DIR = Path(__file__).resolve().parents[2] / "app"
APP = str(APP_DIR / "streamlit_app.py")


def _texts(at: AppTest) -> str:
    """Every text the page shows (titles, markdown, captions, alerts, metrics)."""
    parts: list[str] = []
    for group in (
        at.title,
        at.header,
        at.subheader,
        at.markdown,
        at.caption,
        at.info,
        at.warning,
        at.error,
        at.success,
    ):
        parts += [str(e.value) for e in group]
    parts += [f"{m.label}={m.value}" for m in at.metric]
    return "\n".join(parts)


def _links(at: AppTest) -> list[str]:
    return [str(e.proto.label) for e in at.get("page_link")]


def _login(at: AppTest, user: tuple[str, str]) -> AppTest:
    at.text_input(key="login_username").set_value(user[0])
    at.text_input(key="login_password").set_value(user[1])
    at.button[0].click()
    return at.run()


def _app(user: tuple[str, str] | None = REVIEWER) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30).run()
    return _login(at, user) if user else at


def _open_case(at: AppTest, case_id: int) -> AppTest:
    at.query_params["case"] = str(case_id)
    return at.switch_page("app_pages/case.py").run()


def test_login_wrong_password_then_right(seeded: Seeded) -> None:
    at = _app(None)
    assert at.title[0].value == "medcl review: log in"
    _login(at, (REVIEWER[0], "wrong-password"))
    assert [e.value for e in at.error] == ["invalid username or password"]
    assert "session_token" not in at.session_state
    _login(at, REVIEWER)
    assert not at.exception
    assert at.title[0].value == "Worklist"
    assert "Signed in as **alice** (reviewer)" in [c.value for c in at.sidebar.caption]


def test_worklist_model_filter_shows_names_for_people(seeded: Seeded) -> None:
    at = _app()
    box = at.selectbox(key="worklist_model")
    # the card's display name with the pipeline's name; a model without a card by its own name
    assert box.options == [
        "(all)",
        f"{SLIDE_CARD['display_name']} (abmil)",
        "Lesion retrieval vote (lmm)",
        "unet",
    ]
    box.set_value("abmil").run()
    assert _links(at) == [plain(CASE_KEYS["slide"])]


def test_worklist_lists_filters_and_sorts(seeded: Seeded) -> None:
    at = _app()
    # default sort: most uncertain first (slide 0.45, retrieval 0.30, volume 0.10)
    # labels are shown as text: Markdown characters escaped (issue 14)
    assert _links(at) == [plain(CASE_KEYS[k]) for k in ("slide", "retrieval", "volume")]
    assert "3 case(s); page 1 of 1" in _texts(at)
    at.selectbox(key="worklist_kind").set_value("volume").run()
    assert _links(at) == [plain(CASE_KEYS["volume"])]
    at.selectbox(key="worklist_kind").set_value("(all)")
    at.selectbox(key="worklist_site").set_value("hospital-a").run()
    assert _links(at) == [plain(CASE_KEYS["slide"]), plain(CASE_KEYS["retrieval"])]
    at.selectbox(key="worklist_sort").set_value("least uncertain first").run()
    assert _links(at) == [plain(CASE_KEYS["retrieval"]), plain(CASE_KEYS["slide"])]
    at.text_input(key="worklist_search").set_value("nothing-like-this").run()
    assert _links(at) == [] and "No case matches these filters." in _texts(at)


def _captions(at: AppTest) -> list[str]:
    from streamlit.testing.v1.element_tree import Image

    return [c for e in at.get("image") if isinstance(e, Image) for c in e.captions]


def _charts(at: AppTest) -> list[Any]:
    return list(at.get("vega_lite_chart"))


def test_slide_case_renders(seeded: Seeded) -> None:
    case_id = seeded.case_ids["slide"]
    at = _open_case(_app(), case_id)
    assert not at.exception and not at.error
    assert at.title[0].value == plain(CASE_KEYS["slide"])
    text = _texts(at)
    assert "Predicted label=tumor" in text
    assert "Probability=0.55" in text
    assert f"Slide {plain('tiny.tif')}: 256 x 192 px at level 0" in text
    # the colour bar the pipeline wrote, named by the score it shows
    assert f"**Heatmap colour**: {plain('attention (rank-normalised)')}" in text
    # the zoom is outlined on the clickable thumbnail (a component, not st.image)
    assert "black-and-white box = zoom at x=0, y=0, 256 x 192 px" in text
    assert "Zoom at full resolution: x=0, y=0, 256 x 192 px" in _captions(at)
    at.number_input(key=f"slide_{case_id}_zoom_size").set_value(64)
    at.number_input(key=f"slide_{case_id}_zoom_x").set_value(250).run()
    assert "Zoom at full resolution: x=192, y=0, 64 x 64 px" in _captions(at)


def test_slide_top_tiles_link_to_their_place(seeded: Seeded) -> None:
    case_id = seeded.case_ids["slide"]
    at = _open_case(_app(), case_id)
    text = _texts(at)
    assert "**Top 2 tiles** (highest score first)" in text
    assert "\\#1: score 0.900 at x=192, y=128" in text or "#1: score 0.900 at x=192, y=128" in text
    assert [b.label for b in at.button if b.label.startswith("Zoom to tile")] == [
        "Zoom to tile 1",
        "Zoom to tile 2",
    ]
    at.button(key=f"slide_{case_id}_tile_1").click().run()  # tile 2 at (64, 32)
    assert not at.exception
    assert f"Zoom at full resolution: x=64, y=32, {TILE_SIDE} x {TILE_SIDE} px" in _captions(at)
    assert at.number_input(key=f"slide_{case_id}_zoom_size").value == TILE_SIDE
    at.button(key=f"slide_{case_id}_tile_0").click().run()  # tile 1 at (192, 128)
    assert f"Zoom at full resolution: x=192, y=128, {TILE_SIDE} x {TILE_SIDE} px" in _captions(at)
    assert f"black-and-white box = zoom at x=192, y=128, {TILE_SIDE} x {TILE_SIDE} px" in _texts(at)
    assert TILE_NAMES[0].startswith("top_01_")


def test_case_shows_model_card_research_notice_and_confidence(seeded: Seeded) -> None:
    at = _open_case(_app(), seeded.case_ids["slide"])
    warnings = [w.value for w in at.warning]
    assert any("Research / demonstration model: not for clinical use." in w for w in warnings)
    text = _texts(at)
    assert f"**Model:** {plain(SLIDE_CARD['display_name'])}" in text
    assert f"**Trained on:** {plain(SLIDE_CARD['trained_on'])}" in text
    assert f"**Intended use:** {plain(SLIDE_CARD['intended_use'])}" in text
    assert plain("Tiny ABMIL tumour classifier (test)") in at.caption[0].value  # not abmil fold0
    # uncertainty defined where it is shown (help of the metric and a caption)
    defined = (
        "Uncertainty, from 0 (sure) to 1 (unsure): 1 - the probability of the predicted class."
    )
    assert plain(defined) in text
    (uncertainty,) = [m for m in at.metric if m.label == "Uncertainty"]
    assert uncertainty.proto.help == plain(defined)
    # every class probability as a bar chart, open on the page (no expander)
    assert len(_charts(at)) == 1 and not at.expander
    assert "tumor 0.55 (predicted) · normal 0.45" in text
    retrieval = _open_case(_app(), seeded.case_ids["retrieval"])
    assert not [w for w in retrieval.warning if "not for clinical use" in w.value]
    assert "**Model:** Lesion retrieval vote" in _texts(retrieval)
    assert "1 \\- the highest class score" in _texts(retrieval)  # no definition in its card


def test_volume_case_without_card_lists_every_structure(seeded: Seeded) -> None:
    at = _open_case(_app(), seeded.case_ids["volume"])
    assert not at.exception and not at.error
    assert "No model card: the pipeline did not say what this model was trained on or is for." in [
        i.value for i in at.info
    ]
    text = _texts(at)
    assert "Predicted structures=1" in text and "**Predicted structures (1)**" in text
    structures = next(d.value for d in at.dataframe if "structure" in d.value.columns)
    assert structures["structure"].tolist() == ["liver"]
    assert structures["confidence"].tolist() == [pytest.approx(0.9)]


def _blind_off(seeded: Seeded) -> None:
    """Blind review off (these tests show what a reviewer sees without it; blind review:
    tests/app/test_blind_review.py)."""
    store = Store.open(seeded.url, workspace=seeded.root)
    service.set_blind_review(store, auth.system_user(), False)
    store.close()


def test_volume_case_renders_with_dice(seeded: Seeded) -> None:
    _blind_off(seeded)
    at = _open_case(_app(), seeded.case_ids["volume"])
    assert not at.exception and not at.error
    key = f"volume_{seeded.case_ids['volume']}"
    assert at.slider(key=f"{key}_axial_slice").value == 2
    assert at.checkbox(key=f"{key}_class_1").label == "liver"
    dice = at.dataframe[-1].value
    assert dice["name"].tolist() == ["liver"]
    assert dice["dice"].tolist() == [pytest.approx(2 * 12 / (16 + 12))]
    at.radio(key=f"{key}_plane").set_value("sagittal").run()
    assert at.slider(key=f"{key}_sagittal_slice").max == 7


def test_volume_window_presets_manual_and_legend(seeded: Seeded) -> None:
    at = _open_case(_app(), seeded.case_ids["volume"])
    key = f"volume_{seeded.case_ids['volume']}"
    window = at.selectbox(key=f"{key}_window")
    assert window.label == "Window (modality not recorded)"
    assert window.options[:5] == [
        "percentiles 0.5-99.5",
        "percentiles 1-99",
        "CT soft tissue (W400 / L40)",
        "CT lung (W1500 / L-600)",
        "CT bone (W1800 / L400)",
    ]
    assert window.options[-1] == "manual window / level"
    window.set_value("CT soft tissue (W400 / L40)").run()
    assert not at.exception
    assert "W 400 / L 40" in _texts(at)
    at.selectbox(key=f"{key}_window").set_value("manual window / level").run()
    assert at.number_input(key=f"{key}_manual_width").value == 400.0  # starts at the last window
    assert at.number_input(key=f"{key}_manual_level").value == 40.0
    at.number_input(key=f"{key}_manual_width").set_value(100.0).run()
    assert not at.exception and at.number_input(key=f"{key}_manual_width").value == 100.0
    legend = next(m.value for m in at.markdown if "■" in m.value)
    assert "liver" in legend
    at.checkbox(key=f"{key}_class_1").uncheck().run()
    assert not [m for m in at.markdown if "■" in m.value]
    assert "No class shown (all toggled off)." in _texts(at)


def test_retrieval_case_renders(seeded: Seeded) -> None:
    at = _open_case(_app(), seeded.case_ids["retrieval"])
    assert not at.exception and not at.error
    rows = next(df for df in (d.value for d in at.dataframe) if "similarity" in df.columns)
    assert rows["label"].tolist() == ["nv", "mel"]
    # blind review (default): alice has not reviewed it, so no truth to compare with
    assert rows["same_as_truth"].tolist() == [None, None]
    assert "**LMM answer**: nv" in _texts(at)


def _submit(at: AppTest, case_id: int, decision: str, label: str = "", comment: str = "") -> None:
    at.radio(key=f"review_decision_{case_id}").set_value(decision)
    at.selectbox(key=f"review_label_{case_id}").set_value(label or "(none)")
    at.text_area(key=f"review_comment_{case_id}").set_value(comment)
    at.select_slider(key=f"review_confidence_{case_id}").set_value(4)
    next(b for b in at.button if b.label == "Submit review").click()
    at.run()


def test_review_submit_is_stored(seeded: Seeded) -> None:
    case_id = seeded.case_ids["slide"]
    at = _open_case(_app(), case_id)
    comment = ("stroma, not tumour; " + "the long comment goes on. " * 30).strip()
    _submit(at, case_id, "correct", "normal", comment)
    assert not at.exception
    assert [s.value for s in at.success] == ["Review saved: correct (case version 1)."]
    # the history shows each review with its whole comment (never cut)
    heading = next(m.value for m in at.markdown if m.value.startswith("**alice**"))
    assert heading.startswith(f"**alice** · {plain('correct -> normal · confidence 4/5 · ')}")
    assert heading.endswith(plain(" UTC · case version 0"))
    assert comment in [t.value for t in at.text]
    store = Store.open(seeded.url, workspace=seeded.root)
    rows = service.case_history(store, _user(store, REVIEWER), case_id)
    assert [
        (r.reviewer, r.decision, r.corrected_label, r.comment, r.confidence, r.case_version)
        for r in rows
    ] == [("alice", "correct", "normal", comment, 4, 0)]


def _user(store: Store, creds: tuple[str, str]) -> UserInfo:
    return auth.authenticate(store, *creds).user


def test_conflict_shows_the_other_review(seeded: Seeded) -> None:
    _blind_off(seeded)
    case_id = seeded.case_ids["volume"]
    at = _open_case(_app(), case_id)  # alice sees version 0
    store = Store.open(seeded.url, workspace=seeded.root)
    service.submit_review(
        store,
        _user(store, ADMIN),
        case_id,
        decision="reject",
        comment="wrong organ",
        expected_version=0,
    )
    _submit(at, case_id, "accept")
    assert not at.exception
    (message,) = [e.value for e in at.error]
    assert message.startswith(plain("case was reviewed by root at "))
    assert message.endswith(plain("while you were editing; your review was not saved"))
    other = at.table[0].value  # the other review, above the history
    assert other[["reviewer", "decision", "comment"]].values.tolist() == [
        ["root", "reject", "wrong organ"]
    ]
    # the history shows the case as it is now
    assert [m.value for m in at.markdown if m.value.startswith("**root**")]
    assert "wrong organ" in [t.value for t in at.text]
    assert len(service.case_history(store, _user(store, REVIEWER), case_id)) == 1


def test_admin_page_only_for_admins(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    reviewer = _app()
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        reviewer.switch_page("app_pages/admin.py")
    admin = _app(ADMIN)
    admin.switch_page("app_pages/admin.py").run()
    assert not admin.exception and not admin.error
    assert admin.title[0].value == "Administration"
    users = admin.dataframe[0].value
    assert sorted(users["username"].tolist()) == ["alice", "root"]
    audit = admin.dataframe[1].value
    assert {"login", "import"} <= set(audit["action"])
    # the admin page run directly with a reviewer's valid session refuses too
    monkeypatch.syspath_prepend(str(APP_DIR))
    direct = AppTest.from_file(str(APP_DIR / "app_pages" / "admin.py"), default_timeout=30)
    direct.session_state["session_token"] = reviewer.session_state["session_token"]
    direct.run()
    assert [e.value for e in direct.error] == ["This page is for administrators."]
    assert not direct.title and not direct.dataframe


@pytest.mark.parametrize("page", ["worklist.py", "case.py", "admin.py"])
def test_no_page_shows_data_without_a_session(
    seeded: Seeded, page: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(APP_DIR))
    at = AppTest.from_file(str(APP_DIR / "app_pages" / page), default_timeout=30)
    at.query_params["case"] = str(seeded.case_ids["slide"])
    at.run()
    assert not at.exception
    assert [w.value for w in at.warning] == ["Please log in to see this page."]
    assert not at.title and not at.dataframe and not at.metric


def test_deep_link_without_session_shows_login(seeded: Seeded) -> None:
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["case"] = str(seeded.case_ids["slide"])
    at.run()
    assert at.title[0].value == "medcl review: log in"
    assert CASE_KEYS["slide"] not in _texts(at)
    assert not at.metric and not at.dataframe and not at.table


def test_admin_adds_and_deactivates_users(seeded: Seeded) -> None:
    at = _app(ADMIN)
    at.switch_page("app_pages/admin.py").run()
    at.text_input(key="admin_new_username").set_value("carol")
    at.text_input(key="admin_new_password").set_value("short")
    next(b for b in at.button if b.label == "Add user").click()
    at.run()
    assert [e.value for e in at.error] == ["password must have at least 8 characters"]
    at.text_input(key="admin_new_username").set_value("carol")
    at.text_input(key="admin_new_password").set_value("carol-password-1")
    next(b for b in at.button if b.label == "Add user").click()
    at.run()
    assert [s.value for s in at.success] == ["User carol added."]
    at.selectbox(key="admin_target_user").set_value("alice")
    at.button(key="admin_deactivate").click()
    at.run()
    assert not at.exception
    store = Store.open(seeded.url, workspace=seeded.root)
    users = {u.username: u for u in auth.list_users(store, _user(store, ADMIN))}
    assert users["carol"].role == "reviewer" and users["carol"].active
    assert not users["alice"].active
    actions = [e.action for e in service.audit_log(store, _user(store, ADMIN), limit=50)]
    assert "add_user" in actions and "set_active" in actions
