"""The rating page in a real browser: headless Chromium driven by Selenium, the server a real subprocess.

Needs Debian's chromium and chromium-driver (apt) and selenium (the dev extra). Without them the tests skip with
the reason, except under CI=true, where their absence is a failure (.ci/run installs them).

Screenshots of both pages are written to the test's folder; set RATING_SCREENSHOTS_DIR=docs to refresh the ones
the README shows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rating_helpers import BAD, GOOD, PROMPTS, ROOT, Server, read_lines, write_generations

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def _require_browser() -> tuple[str, str]:
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    chromium = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    driver = shutil.which("chromedriver")
    if chromium is None:
        missing.append("chromium (apt-get install chromium)")
    if driver is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if missing:
        message = f"the browser test needs {', '.join(missing)}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--lang=en-US"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def screenshot(driver, tmp_path: Path, name: str) -> None:
    driver.execute_script("window.scrollTo(0, 0); document.activeElement.blur();")
    driver.save_screenshot(str(tmp_path / name))
    folder = os.environ.get("RATING_SCREENSHOTS_DIR")
    if folder:
        shutil.copyfile(tmp_path / name, Path(folder) / name)


def wait_for(driver, css: str, timeout: float = 60):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))


def settled(action, timeout: float = 30):
    """`action()`, again while the node it found belongs to a page being replaced (a reload or a navigation that
    had not finished): Chromium then answers "stale element" or "Node ... does not belong to the document"."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except (StaleElementReferenceException, WebDriverException) as error:
            replaced = isinstance(error, StaleElementReferenceException) or "does not belong to the document" in str(error)
            if not replaced or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def click_to_next_page(driver, css: str, timeout: float = 60) -> None:
    """Click a link or submit button and wait until the page it leads to has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    page = settled(lambda: driver.find_element(By.TAG_NAME, "html"))
    settled(lambda: wait_for(driver, css).click())
    WebDriverWait(driver, timeout).until(EC.staleness_of(page))


def text(driver, css: str) -> str:
    return settled(lambda: wait_for(driver, css).text)


def shown_pair(driver) -> tuple[str, str, str]:
    return text(driver, "#instruction"), text(driver, "#answer-a"), text(driver, "#answer-b")


def choose(driver, choice: str, comment: str = "") -> None:
    if comment:
        wait_for(driver, "#comment").send_keys(comment)
    click_to_next_page(driver, f"#choose-{choice}")


def start_as(driver, url: str, annotator: str) -> None:
    driver.get(url + "/blind")
    field = wait_for(driver, "#annotator")
    field.clear()
    field.send_keys(annotator)
    click_to_next_page(driver, "#start")


def rate_pair(driver, tie_prompt: int) -> tuple[int, str]:
    """Choose the side showing the good answer, or tie on `tie_prompt`; (prompt index, choice)."""
    instruction, answer_a, answer_b = shown_pair(driver)
    prompt = [p for p, _ in PROMPTS].index(instruction)
    if prompt == tie_prompt:
        choice = "tie"
    else:
        assert {answer_a, answer_b} == {GOOD[prompt], BAD[prompt]}  # one answer of each file, names hidden
        choice = "A" if answer_a == GOOD[prompt] else "B"
    choose(driver, choice, comment=f"prompt {prompt}")
    return prompt, choice


def test_blind_rating_in_the_browser_resumes_survives_a_kill_and_is_scored(browser, tmp_path):
    good = write_generations(tmp_path / "good.jsonl", GOOD, "good")
    bad = write_generations(tmp_path / "bad.jsonl", BAD, "bad")
    ratings = tmp_path / "human.jsonl"
    args = ["blind", str(good), str(bad), "--ratings_file", str(ratings)]
    scores = {"good": 0.0}  # what the clicks give the good file: a win 1, a tie 1/2

    server = Server(args, tmp_path / "log1")
    try:
        start_as(browser, server.url, "alice")
        assert text(browser, "#progress") == "alice: 0 of 4 rated"
        screenshot(browser, tmp_path, "rating_blind.png")
        for _ in range(2):
            prompt, choice = rate_pair(browser, tie_prompt=3)
            scores["good"] += 0.5 if choice == "tie" else 1.0
        assert text(browser, "#progress") == "alice: 2 of 4 rated"
        before = shown_pair(browser)
        browser.refresh()  # a reload shows the same next pair, sides included
        assert shown_pair(browser) == before and text(browser, "#progress") == "alice: 2 of 4 rated"
        browser.get(server.url + "/blind")  # the start page lists alice; resume goes back to the same pair
        assert "alice 2 of 4" in text(browser, "#annotators")
        screenshot(browser, tmp_path, "rating_blind_start.png")
        click_to_next_page(browser, "#annotators a")
        assert shown_pair(browser) == before
        for _ in range(2):
            prompt, choice = rate_pair(browser, tie_prompt=3)
            scores["good"] += 0.5 if choice == "tie" else 1.0
        assert text(browser, "#done") == "All 4 pairs rated"

        start_as(browser, server.url, "bob")  # a second annotator: own order, same files
        bob_first = shown_pair(browser)
        for _ in range(2):
            prompt, choice = rate_pair(browser, tie_prompt=3)
            scores["good"] += 0.5 if choice == "tie" else 1.0
        assert text(browser, "#progress") == "bob: 2 of 4 rated"
    finally:
        server.kill()  # SIGKILL: nothing runs after it

    rows = read_lines(ratings)
    assert ratings.read_bytes().endswith(b"\n") and len(rows) == 6  # every click, whole lines
    good_path, bad_path = str(good.resolve()), str(bad.resolve())
    for row in rows:
        assert row["kind"] == "pairwise" and row["files"] == [good_path, bad_path]
        assert set(row["sides"].values()) == {good_path, bad_path} and row["comment"] == f"prompt {row['prompt_id']}"
        expected_winner = None if row["prompt_id"] == 3 else good_path
        assert row["winner_file"] == expected_winner
        assert row["choice"] == ("tie" if row["prompt_id"] == 3 else
                                 "A" if row["sides"]["A"] == good_path else "B")
    assert [r["annotator"] for r in rows] == ["alice"] * 4 + ["bob"] * 2
    assert sorted(r["prompt_id"] for r in rows[:4]) == [0, 1, 2, 3]

    # a new server on the same file: bob resumes where he left off
    with Server(args, tmp_path / "log2") as again:
        start_as(browser, again.url, "bob")
        assert text(browser, "#progress") == "bob: 2 of 4 rated" and shown_pair(browser) != bob_first

    out = tmp_path / "metrics"
    result = subprocess.run([sys.executable, "evaluate_metrics.py", str(good), str(bad), "--output_dir", str(out),
                             "--bertscore_model", "minilm", "--bootstrap", "200", "--pairwise_ratings", str(ratings)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    human = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["human_pairwise"]
    rates = {s["label"]: s for s in human["systems"]}
    assert rates["good"]["n"] == 6 and rates["good"]["win_rate"] == pytest.approx(scores["good"] / 6)
    assert rates["bad"]["win_rate"] == pytest.approx(1 - scores["good"] / 6)
    low, high = rates["good"]["win_rate_ci95"]
    assert low <= rates["good"]["win_rate"] <= high <= 1.0
    assert human["metric_agreement"]["rougeL_f1"]["pairwise_accuracy"] == 1.0  # good = the reference
    [pair] = human["annotator_agreement"]
    assert (pair["a"], pair["b"], pair["n_shared"], pair["raw_agreement"]) == ("alice", "bob", 2, 1.0)


def test_chat_in_the_browser_streams_an_answer_and_rates_it(browser, tmp_path, tiny_model):
    import torch

    from alpaca_qlora.generation.generate import generate_answers, load_for_inference, prompt_for, seed_everything
    from alpaca_qlora.generation.settings import GenerationSettings, resolve_settings
    from alpaca_qlora.generation.source import InferenceModelArguments, resolve_model_source

    ratings = tmp_path / "ratings.jsonl"
    args = ["chat", "--base_model", str(tiny_model), "--max_new_tokens", "16", "--ratings_file", str(ratings)]
    with Server(args, tmp_path / "log", env={"OMP_NUM_THREADS": "1"}) as server:
        browser.get(server.url + "/chat")
        wait_for(browser, "#instruction").send_keys("Name three primary colors.")
        for name, value in (("temperature", "0.7"), ("max_new_tokens", "12"), ("seed", "7")):
            field = wait_for(browser, f"#{name}")
            field.clear()
            field.send_keys(value)
        browser.execute_script(  # record every text the answer box shows: the streamed pieces as they add up
            "window.shown = []; new MutationObserver((changes) => changes.forEach((change) => "
            "change.addedNodes.forEach((node) => window.shown.push(node.textContent))))"
            ".observe(document.getElementById('answer'), {childList: true});")
        wait_for(browser, "#generate").click()
        wait_for(browser, '#status[data-state="done"]')
        shown = browser.execute_script("return window.shown")
        answer = wait_for(browser, "#answer").get_attribute("textContent")  # as sent, not as rendered
        wait_for(browser, "#rating-4").click()
        wait_for(browser, "#comment").send_keys("fine")
        wait_for(browser, "#annotator").send_keys("carol")
        screenshot(browser, tmp_path, "rating_chat.png")
        wait_for(browser, "#save-rating").click()
        wait_for(browser, '#rate-status[data-state="saved"]')
        assert text(browser, "#rate-status") == "saved: [1] 4/5"

    # the same answer as inference.py's code gives for these settings and seed
    resolved = resolve_settings(GenerationSettings(temperature=0.7, max_new_tokens=12, seed=7))
    source = resolve_model_source(InferenceModelArguments(base_model=str(tiny_model)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tokenizer = load_for_inference(source)
        seed_everything(7)
        record = {"instruction": "Name three primary colors.", "input": "", "output": ""}
        [expected] = generate_answers(model, tokenizer, [prompt_for(record, source.prompt_template, tokenizer)],
                                      resolved)
    finally:
        torch.set_num_threads(threads)
    assert answer == expected.text
    growing = shown[:-1]  # the last is the whole answer, set when the model is done
    assert len(growing) >= 2 and all(later.startswith(earlier) for earlier, later in zip(growing, growing[1:]))
    assert growing[-1].strip() == expected.text and len(growing[0]) < len(growing[-1])
    [row] = read_lines(ratings)
    assert (row["id"], row["rating"], row["comment"], row["annotator"]) == (1, 4, "fine", "carol")
    assert row["prediction"] == expected.text and row["settings"] == resolved
    assert row["base_model"] == str(tiny_model) and row["adapter"] is None
