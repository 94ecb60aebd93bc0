"""The playground page in a real browser: `tinygpt serve` on a checkpoint, driven by headless Chromium.

Trains a tiny char-level model on three short stories (a few seconds), saves it as a
checkpoint, starts `python -m tinygpt serve` on a free port, then generates a story, starts
a long one and stops it, checking on the server that the generation was dropped; and looks
inside a text in the Inspect view: its tokens, the alternatives on hover, the attention grid
on click, the samples timeline, at desktop and at phone width.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from chromium import FOUND, MISSING, chromium, click_token, inspect_text, serving

if not FOUND:
    pytest.skip(MISSING, allow_module_level=True)

import torch

from tinygpt.checkpoint import save_checkpoint
from tinygpt.config import Config, ModelConfig, TokenizerConfig, dump_toml
from tinygpt.model import GPT
from tinygpt.run import Run
from tinygpt.tokenizers import train_tokenizer

STORIES = """\
Once upon a time, there was a little fox named Pip. Pip liked to run in the green forest. One day, Pip found a \
shiny red ball under a big tree. He wanted to play with it, so he kicked it high. The ball flew over the river. \
Pip was sad. Then his friend the duck swam across and brought the ball back. Pip smiled and said, "Thank you, \
Duck! Let's play together." They played all day and were very happy.

Lily had a small blue boat. Every morning she took it to the pond near her house. The sun was warm and the water \
was calm. One day, the wind blew hard and the boat went far away. Lily ran along the pond. A kind old man saw her \
and helped her get the boat back. Lily said, "Thank you!" The man smiled. From that day on, Lily and the man were \
good friends.

Tom and Sam were two brothers who loved to build things. One rainy day, they built a big castle out of boxes. \
They made a door, a window and a tall tower. Mom came in and laughed. "What a beautiful castle!" she said. The \
brothers were proud. They had a picnic inside the castle and told stories until it was time for bed.
"""
MAX_TOKENS = 20_000  # a generation the test can stop long before it ends


def train_checkpoint(run: Path) -> None:
    """A 2-layer char model that has nearly memorised STORIES: its text reads like a story.

    The stories are one document, so the model never learns to end one: the long
    generation below runs until it is stopped.
    """
    tokenizer = train_tokenizer("char", [STORIES], 0)
    cfg = ModelConfig(family="gpt2", vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: more threads only contend for the shared cores
    try:
        torch.manual_seed(0)
        model = GPT(cfg)
        data = torch.tensor(tokenizer.encode(STORIES))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(300):
            starts = torch.randint(0, len(data) - cfg.block_size - 1, (16,)).tolist()
            x = torch.stack([data[i : i + cfg.block_size] for i in starts])
            y = torch.stack([data[i + 1 : i + 1 + cfg.block_size] for i in starts])
            _, loss = model(x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    tokenizer.save(run / "tokenizer")
    config = dump_toml(Config(model=cfg, tokenizer=TokenizerConfig(kind="char")))
    save_checkpoint(Run(run).step_folder(300), {"model": model.state_dict(), "progress": {"step": 300}}, config, run / "tokenizer")
    samples = [{"step": 0, "val_bpb": 6.2, "text": "Lh,Tg e"}, {"step": 300, "val_bpb": 1.1, "text": STORIES[:80]}]
    Run(run).samples.write_text("".join(json.dumps(row) + "\n" for row in samples), encoding="utf-8")


@pytest.fixture
def server(tmp_path):
    """`tinygpt serve` on a free port; yields the URL."""
    run = tmp_path / "storyteller"
    train_checkpoint(run)
    with serving(run, tmp_path / "serve.log", "--max-tokens", str(MAX_TOKENS)) as url:
        yield url


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path / "chromium-profile") as driver:
        yield driver


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "health", timeout=5) as response:
        return json.load(response)


@pytest.mark.slow
def test_generate_and_stop_in_the_browser(server, browser, tmp_path):
    url = server
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)  # generous: the machine may be busy
    find = browser.find_element
    browser.get(url)
    wait.until(lambda b: find(By.ID, "model-name").text == "storyteller")
    assert "char tokenizer" in find(By.ID, "model-tokenizer").text

    # A whole short story: text appears, the page says why it ended, and shows the speed.
    find(By.ID, "prompt").send_keys("Once upon a time, there was a little fox")
    find(By.ID, "max-tokens").clear()
    find(By.ID, "max-tokens").send_keys("400")
    find(By.ID, "seed").send_keys("3")
    find(By.ID, "generate").click()
    wait.until(lambda b: find(By.ID, "status").text.startswith("done"))
    assert len(find(By.ID, "output").text) > 200
    assert re.fullmatch(r"\d+(\.\d)? tok/s", find(By.ID, "speed").text)
    browser.save_screenshot(str(tmp_path / "playground.png"))

    # A generation far too long to finish: Stop ends it on the server, and the text stops growing.
    find(By.ID, "max-tokens").clear()
    find(By.ID, "max-tokens").send_keys(str(MAX_TOKENS))
    find(By.ID, "seed").clear()
    find(By.ID, "generate").click()
    wait.until(lambda b: len(find(By.ID, "output").text) >= 50)
    assert health(url)["running"] == 1
    find(By.ID, "stop").click()
    wait.until(lambda b: find(By.ID, "status").text == "stopped")
    deadline = time.monotonic() + 5
    while (state := health(url))["running"] or state["waiting"]:
        assert time.monotonic() < deadline, f"the generation went on after Stop: {state}"
        time.sleep(0.05)
    assert state["cancelled"] == 1
    stopped_at = find(By.ID, "output").text
    assert len(stopped_at) < MAX_TOKENS
    time.sleep(0.5)
    assert find(By.ID, "output").text == stopped_at
    assert find(By.ID, "generate").is_enabled() and not find(By.ID, "stop").is_enabled()
    browser.save_screenshot(str(tmp_path / "stopped.png"))

    # Everything the page loaded came from the server itself.
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith(url) for name in loaded), loaded
    print(f"screenshots: {tmp_path / 'playground.png'}, {tmp_path / 'stopped.png'}")  # shown with pytest -s


@pytest.mark.slow
def test_inspect_view_in_the_browser(server, browser, tmp_path):
    url = server
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
    find = browser.find_element
    browser.get(url)
    wait.until(lambda b: find(By.ID, "model-name").text == "storyteller")

    text = "Once upon a time, there was a little fox named Pip."  # within the context of 64
    assert inspect_text(browser, wait, text) == f"{len(text)} tokens"  # a char model: one token per character
    spans = browser.find_elements(By.CSS_SELECTOR, "#tokens .token:not(.context)")
    assert len(spans) == len(text)
    assert re.fullmatch(r"\d\.\d{3} bits per byte \(\d+\.\d\d bits per token\)", find(By.ID, "inspect-bpb").text)

    # Hover: the token's probability and the five tokens the model expected there.
    ActionChains(browser).move_to_element(spans[30]).perform()  # the "l" of "little"
    wait.until(lambda b: find(By.ID, "token-tip").is_displayed())
    tip = find(By.ID, "token-tip")
    alternatives = tip.find_elements(By.CSS_SELECTOR, ".alternatives li")
    assert len(alternatives) == 5 and "the model expected" in tip.text
    assert all(re.search(r"\d(\.\d+)?%|e-\d", li.text) for li in alternatives)
    assert tip.find_element(By.CSS_SELECTOR, ".piece").text == "l"

    # Click: the attention grid (2 layers x 4 heads) and the logit lens at that token.
    cells = click_token(browser, wait, spans[37])  # "f" of "fox"
    assert len(cells) == 2 * 4
    assert len(browser.find_elements(By.CSS_SELECTOR, "#lens-table tr")) == 1 + 2
    ActionChains(browser).move_to_element(cells[5]).perform()
    wait.until(lambda b: "attention from f, layer 1 head 1" in find(By.ID, "painting").text)
    painted = [s.value_of_css_property("background-color") for s in spans[:38]]
    assert any(color.startswith("rgba(47, 111, 235") for color in painted)
    browser.save_screenshot(str(tmp_path / "inspect.png"))

    # The run's samples timeline, and a sample inspected from it.
    items = browser.find_elements(By.CSS_SELECTOR, "#timeline li")
    assert len(items) == 2 and "step 300" in items[1].text and "1.100 bits per byte" in items[1].text
    items[0].find_element(By.TAG_NAME, "button").click()
    wait.until(lambda b: find(By.ID, "token-count").text == "7 tokens")

    # Phone width: nothing wider than the screen.
    browser.set_window_size(390, 844)
    inspect_text(browser, wait, text)
    click_token(browser, wait, browser.find_elements(By.CSS_SELECTOR, "#tokens .token:not(.context)")[10])
    wide = browser.execute_script(
        "return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 391)"
        ".map(e => e.tagName + '#' + e.id + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 390, wide
    browser.save_screenshot(str(tmp_path / "inspect-phone.png"))
    print(f"screenshots: {tmp_path / 'inspect.png'}, {tmp_path / 'inspect-phone.png'}")
