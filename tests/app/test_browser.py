"""The review app in a real browser: streamlit run + headless Chromium (Playwright sync API).

Screenshots of every step go to ``$MEDCL_SCREENSHOTS`` (or the test's tmp folder); the path is
printed. Skipped when /usr/bin/chromium is missing (Playwright's own browsers are never
downloaded).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from review_seed import ADMIN, CASE_KEYS, REVIEWER, Seeded, seed

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_MS = 30_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"streamlit did not answer on {url} within {timeout_s:.0f} s")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Seeded]]:
    data = seed(tmp_path / "store")
    port = _free_port()
    env = {
        **os.environ,
        "MEDCL_REVIEW_DB": data.url,
        "MEDCL_WORKSPACE": str(data.root),
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    }
    log = (tmp_path / "streamlit.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(REPO / "app" / "streamlit_app.py"),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url, data
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_blind_review_walkthrough_then_admin_sees_everything(
    server: tuple[str, Seeded], tmp_path: Path
) -> None:
    """A reviewer, blind (the default), reviews one case of each kind: a window preset on the
    volume, click-to-zoom on the slide, a correction outside the class map refused; then the
    session survives a reload, other browsers get the login, and an admin sees the ground truth
    and the reviews."""
    from playwright.sync_api import expect, sync_playwright

    url, data = server
    shots = Path(os.environ.get("MEDCL_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {shots}")
    case_id = data.case_ids["slide"]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)  # assertions wait as long as actions (cold server)

        def login(creds: tuple[str, str]) -> None:
            page.get_by_label("Username", exact=True).fill(creds[0])
            page.get_by_label("Password", exact=True).fill(creds[1])
            page.get_by_role("button", name="Log in").click()

        def shot(name: str) -> None:
            page.wait_for_timeout(800)  # let images and fragments settle
            page.screenshot(path=str(shots / name), full_page=True)

        def settled() -> None:
            """Wait until Streamlit has replaced every element of the previous run."""
            page.wait_for_timeout(300)
            page.wait_for_function("() => !document.querySelector('[data-stale=\"true\"]')")

        def open_case(kind: str) -> None:
            page.get_by_role("link", name="Worklist").click()
            settled()
            expect(page.get_by_role("heading", name="Worklist")).to_be_visible()
            link = page.get_by_role("link", name=CASE_KEYS[kind], exact=True)
            expect(link).to_be_visible()
            settled()
            link.click()
            settled()
            expect(page.get_by_role("heading", name=CASE_KEYS[kind])).to_be_visible()

        def refused_label(label: str) -> None:
            """The corrected-label list offers only the class map: typing ``label`` finds none."""
            box = page.get_by_role("combobox", name="Corrected label")
            box.click()
            page.keyboard.type(label)
            expect(page.get_by_role("option", name=label, exact=True)).to_have_count(0)
            expect(page.get_by_text("No results", exact=False).first).to_be_visible()
            page.keyboard.press("Escape")

        def submit(decision: str, label: str | None, comment: str, saved: str) -> None:
            page.get_by_text(decision, exact=True).click()
            if label is not None:
                page.get_by_role("combobox", name="Corrected label").click()
                page.get_by_role("option", name=label, exact=True).click()
            page.get_by_label("Comment").fill(comment)
            page.get_by_role("button", name="Submit review").click()
            expect(page.get_by_text(saved)).to_be_visible()

        page.goto(url)
        expect(page.get_by_text("medcl review: log in")).to_be_visible()
        shot("01_login.png")
        login(REVIEWER)
        expect(page.get_by_role("heading", name="Worklist")).to_be_visible()
        expect(page.get_by_text(CASE_KEYS["slide"])).to_be_visible()
        shot("02_worklist.png")

        # volume, blind: no ground truth, no Dice; a window preset redraws the slices
        open_case("volume")
        expect(page.get_by_text("Blind review: the ground truth", exact=False)).to_be_visible()
        expect(page.get_by_text("Predicted structures", exact=False).first).to_be_visible()
        assert page.get_by_text("Dice per class").count() == 0
        page.get_by_role("combobox", name="Window (modality not recorded)").click()
        page.get_by_role("option", name="CT lung (W1500 / L-600)").click()
        expect(page.get_by_text("W 1500 / L -600")).to_be_visible()
        shot("03_volume_case_blind.png")
        submit("accept", None, "liver outline fine", "Review saved: accept (case version 1).")
        expect(page.get_by_text("Dice per class")).to_be_visible()  # shown once submitted

        # retrieval, blind: the true label hidden; a label outside the class map is not offered
        open_case("retrieval")
        expect(page.get_by_text("Query image")).to_be_visible()
        expect(page.get_by_text("hidden until you submit your review").first).to_be_visible()
        shot("04_retrieval_case_blind.png")
        refused_label("bcc")
        submit("correct", "mel", "pigment network", "Review saved: correct (case version 1).")
        expect(page.locator("li", has_text="true label").first).to_contain_text("true label: mel")
        shot("04b_retrieval_after_submit.png")

        # slide: model card notice, click-to-zoom, top tile, a refused and a valid correction
        open_case("slide")
        expect(page.get_by_text("Zoom at full resolution")).to_be_visible()
        expect(page.get_by_text("not for clinical use", exact=False)).to_be_visible()
        shot("05_slide_case.png")
        page.get_by_label("Zoom size (px)").fill("64")
        page.get_by_label("Zoom size (px)").press("Enter")
        box_text = page.get_by_text("black-and-white box = zoom at", exact=False)
        expect(box_text).to_contain_text("64 x 64 px")
        before = box_text.inner_text()
        thumb = page.frame_locator("iframe[title*='streamlit_image_coordinates']").locator("img")
        size = thumb.bounding_box()
        assert size is not None and size["width"] >= 700, size  # readable: the page's width
        thumb.click(position={"x": size["width"] * 0.9, "y": size["height"] * 0.85})
        # the slide is 256 x 192 px: the click centres the zoom near (230, 163), clamped
        expect(box_text).to_contain_text("zoom at x=192, y=128, 64 x 64 px")
        assert box_text.inner_text() != before
        expect(
            page.get_by_text("Zoom at full resolution: x=192, y=128, 64 x 64 px")
        ).to_be_visible()
        shot("05b_slide_click_zoom.png")
        page.get_by_role("button", name="Zoom to tile 2").click()
        expect(page.get_by_text("Zoom at full resolution: x=64, y=32, 32 x 32 px")).to_be_visible()
        shot("05c_slide_top_tile.png")
        refused_label("necrosis")
        submit("correct", "normal", "stroma, not tumour", "Review saved: correct (case version 1).")
        shot("06_review_saved.png")

        # A reload keeps the login (session cookie) and shows the saved review.
        cookie = next(c for c in page.context.cookies() if c["name"] == "medcl_session")
        assert cookie["sameSite"] == "Strict" and cookie["expires"] > 0
        page.reload()
        expect(page.get_by_role("heading", name=CASE_KEYS["slide"])).to_be_visible()
        expect(page.get_by_text("stroma, not tumour").first).to_be_visible()
        assert re.search(r"/case\?case=" + str(case_id), page.url), page.url
        page.get_by_role("heading", name="History").scroll_into_view_if_needed()
        shot("08_after_reload.png")

        # Another browser without the cookie gets the login page for the same URL.
        other = browser.new_context().new_page()
        other.goto(f"{url}/case?case={case_id}")
        expect(other.get_by_text(f"Log in to open case {case_id}.")).to_be_visible()
        other.screenshot(path=str(shots / "07_other_browser_login.png"), full_page=True)
        assert other.get_by_text("stroma, not tumour").count() == 0

        page.get_by_role("link", name="Log out").click()
        expect(page.get_by_text("medcl review: log in")).to_be_visible()
        page.wait_for_timeout(1500)  # the cookie is cleared by the page that loads after logout
        assert not any(c["name"] == "medcl_session" and c["value"] for c in page.context.cookies())
        page.goto(f"{url}/case?case={case_id}")
        expect(page.get_by_text("medcl review: log in")).to_be_visible()
        expect(page.get_by_text(f"Log in to open case {case_id}.")).to_be_visible()
        assert page.get_by_text("Zoom at full resolution").count() == 0
        assert page.get_by_text("stroma, not tumour").count() == 0
        shot("09_logged_out_deep_link.png")

        # the admin sees the ground truth and the reviewer's reviews
        page.goto(url)
        login(ADMIN)
        expect(page.get_by_role("heading", name="Worklist")).to_be_visible()
        open_case("retrieval")
        expect(page.locator("li", has_text="true label").first).to_contain_text("true label: mel")
        expect(page.get_by_text("pigment network").first).to_be_visible()
        assert page.get_by_text("Blind review: the ground truth", exact=False).count() == 0
        shot("10_admin_retrieval.png")
        open_case("volume")
        expect(page.get_by_text("Dice per class")).to_be_visible()
        expect(page.get_by_text("liver outline fine").first).to_be_visible()
        shot("11_admin_volume.png")
        browser.close()
