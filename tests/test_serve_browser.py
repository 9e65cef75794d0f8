"""The search page in a real browser (Debian's Chromium driven by Playwright) against hbt-serve on loopback."""

from __future__ import annotations

import shutil
import threading

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install 'hbt[serve]'")
pytest.importorskip("playwright", reason="Playwright is not installed: pip install playwright (the dev extra)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM, reason="no Chromium: apt-get install chromium (make browser)")]

# Chromium as root, with no network beyond loopback: no sandbox, no background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
HINDI_EVEREST = "माउंट एवरेस्ट कितना ऊँचा है?"  # how high is Mount Everest?
HOSTILE = "<script>window.injected = true</script><img src=x onerror=\"window.injected = true\"> Honey never spoils."


@pytest.fixture(scope="module")
def server_url(default_bundle, tmp_path_factory):
    """hbt-serve over the demo corpus (and one hostile document) on a free loopback port."""
    import uvicorn

    from hbt.corpus import Document, read_corpus
    from hbt.demo import DEMO_CORPUS
    from hbt.encoder import Encoder
    from hbt.index import build_index
    from hbt.search import Searcher
    from hbt.serve.app import create_app
    from hbt.serve.server import server_config

    index_dir = tmp_path_factory.mktemp("serve-browser") / "index"
    docs = [*read_corpus(DEMO_CORPUS), Document("hostile-en", HOSTILE, "<b>not bold</b>", "en")]
    build_index(docs, Encoder(default_bundle), index_dir)
    server = uvicorn.Server(server_config(create_app(Searcher.open(index_dir)), "127.0.0.1", 0))  # hbt-serve's limits
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):  # up to 30 s
        if server.started:
            break
        thread.join(0.05)
    assert server.started, "the server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture()
def page(server_url, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone's width
        page.goto(server_url)
        page.wait_for_selector("#chips button")
        yield page
        page.screenshot(path=str(tmp_path / "search-page.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'search-page.png'}")
        browser.close()


def search_with_keyboard(page, text: str) -> list[dict]:
    page.focus("#query")
    page.keyboard.press("Control+A")
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    return results(page)


def results(page) -> list[dict]:
    page.wait_for_function("document.getElementById('status').textContent.endsWith('results') || "
                           "document.getElementById('status').textContent.includes('results in')")
    return page.eval_on_selector_all(
        "#results li", "items => items.map(li => ({lang: li.querySelector('.lang').textContent, "
        "text: li.querySelector('.text').textContent, meta: li.querySelector('.meta').textContent}))")


def test_hindi_question_finds_the_german_passage_and_chips_filter(page):
    hits = search_with_keyboard(page, HINDI_EVEREST)
    assert any(hit["lang"] == "de" and "Everest" in hit["text"] for hit in hits), hits
    assert page.text_content("#timings").count(" ms") >= 4  # queue, encode, search, fetch, total

    page.focus('#chips button[data-lang="de"]')
    page.keyboard.press("Enter")  # the chips work from the keyboard too
    page.wait_for_function("document.getElementById('status').textContent.includes('in de')")
    german = results(page)
    assert german and {hit["lang"] for hit in german} == {"de"}
    assert "Everest" in german[0]["text"]
    assert page.get_attribute('#chips button[data-lang="de"]', "aria-pressed") == "true"
    page.keyboard.press("Enter")
    page.wait_for_function("!document.getElementById('status').textContent.includes('in de')")
    assert len({hit["lang"] for hit in results(page)}) > 1

    # Readable at a phone's width: nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_document_markup_shows_as_text(page):
    hits = search_with_keyboard(page, "Honey never spoils")
    hostile = [hit for hit in hits if "hostile-en" in hit["meta"]]
    assert hostile and hostile[0]["text"] == HOSTILE
    assert page.evaluate("window.injected") is None
    assert page.locator("#results script, #results img, #results b").count() == 0
    assert "<b>not bold</b>" in page.text_content("#results")


def test_the_mode_switch_reaches_the_searcher(page):
    search_with_keyboard(page, "Honey never spoils")
    assert "lexical" not in page.text_content("#timings")  # auto over every language: dense
    page.focus("#mode")
    page.select_option("#mode", "lexical")  # a change searches again
    page.wait_for_function("document.getElementById('timings').textContent.includes('lexical')")
    hits = results(page)
    assert hits and "encode" not in page.text_content("#timings")  # lexical alone encodes nothing
    assert any("Honey never spoils" in hit["text"] for hit in hits[:3])


def test_the_question_language_select_lets_auto_fuse_within_that_language(page):
    page.click('#chips button[data-lang="en"]')  # English passages only
    search_with_keyboard(page, "Honey never spoils")
    assert "lexical" not in page.text_content("#timings")  # the question's language not given: dense
    assert page.eval_on_selector_all("#query-lang option", "options => options.map(o => o.value)")[:2] == ["", "ar"]
    page.select_option("#query-lang", "en")  # a change searches again: an English question over English, fused
    page.wait_for_function("document.getElementById('timings').textContent.includes('lexical')")
    page.select_option("#query-lang", "de")  # a German question over English passages: dense again
    page.wait_for_function("!document.getElementById('timings').textContent.includes('lexical')")
