"""In a real browser: a Markdown/HTML payload in ``?case=`` is shown as text, links nowhere and
fetches nothing; the Deploy button is hidden (issue 14). Skipped without /usr/bin/chromium."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import pytest
from review_seed import REVIEWER, Seeded
from test_browser import CHROMIUM, TIMEOUT_MS, server

from medcl.review.safe_text import break_autolinks

__all__ = ["server"]  # the fixture, shared with test_browser.py

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed"),
]
PAYLOAD = (
    "[Reset your password](http://evil.example/reset) ![b](http://127.0.0.1:9/x) "
    "**pwnbold** <img src=http://127.0.0.1:9/y> <script>window.pwned=1</script> "
    "www.evil.example mail@evil.example"
)
SHOWN = break_autolinks(PAYLOAD)  # the same text, with invisible joiners that stop autolinks


def test_case_parameter_payload_is_text(server: tuple[str, Seeded]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, _ = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        fetched: list[str] = []
        page.on("request", lambda r: fetched.append(r.url))
        for logged_in in (False, True):
            page.goto(f"{url}/case?case={quote(PAYLOAD)}")
            if logged_in:
                expect(page.get_by_text(f"'{SHOWN}' is not a case id.")).to_be_visible()
            else:
                expect(page.get_by_text(f"Log in to open case {SHOWN}.")).to_be_visible()
            page.wait_for_timeout(1000)
            links = page.locator("a[href*='evil.example']")
            hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
            assert hrefs == [], hrefs
            assert page.locator("a[href*='evil']").count() == 0
            assert page.locator("img[src*='127.0.0.1:9']").count() == 0
            assert page.locator("strong", has_text="pwnbold").count() == 0
            assert page.evaluate("window.pwned === undefined")
            assert page.get_by_text("Deploy", exact=True).count() == 0
            if not logged_in:
                page.get_by_label("Username", exact=True).fill(REVIEWER[0])
                page.get_by_label("Password", exact=True).fill(REVIEWER[1])
                page.get_by_role("button", name="Log in").click()
                expect(page.get_by_text(f"'{SHOWN}' is not a case id.")).to_be_visible()
        hosts = {urlsplit(u).netloc for u in fetched}
        assert not hosts & {"evil.example", "www.evil.example", "127.0.0.1:9"}, hosts
        browser.close()
