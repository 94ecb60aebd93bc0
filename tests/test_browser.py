"""The playground page in a real browser: `tinygpt serve` on a checkpoint, driven by headless Chromium.

Trains a tiny char-level model on three short stories (a few seconds), saves it as a
checkpoint, starts `python -m tinygpt serve` on a free port, then generates a story, starts
a long one and stops it, checking on the server that the generation was dropped.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(f"needs Chromium at {CHROMIUM} and its driver at {CHROMEDRIVER} (Debian: apt-get install chromium chromium-driver)", allow_module_level=True)

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


@pytest.fixture
def server(tmp_path):
    """`tinygpt serve` on a free port (it prints the URL it took); yields the URL."""
    run = tmp_path / "storyteller"
    train_checkpoint(run)
    command = [sys.executable, "-m", "tinygpt", "serve", str(run), "--port", "0", "--device", "cpu", "--max-tokens", str(MAX_TOKENS)]
    log = tmp_path / "serve.log"  # a file, not a pipe: nobody reads stderr while the test runs
    with log.open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        url = None
        for line in process.stdout:
            if match := re.search(r"http://127\.0\.0\.1:\d+/", line):
                url = match.group(0)
                break
        assert url, f"tinygpt serve printed no URL; its stderr:\n{log.read_text()}"
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-quic", f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1100,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


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
