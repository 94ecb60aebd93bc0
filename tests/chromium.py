"""Headless Chromium on a running `tinygpt serve`: for the browser test and `make screenshots` (tests/screenshots.py)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FOUND = Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()
MISSING = f"needs Chromium at {CHROMIUM} and its driver at {CHROMEDRIVER} (Debian: apt-get install chromium chromium-driver)"


@contextlib.contextmanager
def serving(path: Path, log: Path, *flags: str) -> Iterator[str]:
    """`tinygpt serve PATH` on a free port (it prints the URL it took); yields the URL. Its stderr goes to `log`."""
    command = [sys.executable, "-m", "tinygpt", "serve", str(path), "--port", "0", "--device", "cpu", *flags]
    with log.open("w") as stderr:  # a file, not a pipe: nobody reads stderr while the page is driven
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


@contextlib.contextmanager
def chromium(profile: Path, width: int = 1100, height: int = 1000) -> Iterator[webdriver.Chrome]:
    """Headless Chromium that reaches nothing but the page it is sent to."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-quic", f"--user-data-dir={profile}", f"--window-size={width},{height}",
        "--hide-scrollbars",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------- the Inspect view


def inspect_text(driver, wait, text: str) -> str:
    """Open the Inspect view, inspect `text`; returns the token count the page shows ("12 tokens")."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "tab-inspect").click()
    box = driver.find_element(By.ID, "inspect-text")
    box.clear()
    box.send_keys(text)
    count, status = driver.find_element(By.ID, "token-count"), driver.find_element(By.ID, "inspect-status")
    before = driver.execute_script("return document.getElementById('tokens').firstChild")
    driver.find_element(By.ID, "inspect-run").click()
    wait.until(lambda d: "error" in status.get_attribute("class") or (
        status.text == "" and d.execute_script("return document.getElementById('tokens').firstChild") != before))
    assert "error" not in status.get_attribute("class"), status.text
    return count.text


def click_token(driver, wait, span) -> list:
    """Click a token of the Inspect view; returns the attention grid's cells once they are shown."""
    from selenium.webdriver.common.by import By

    span.click()
    wait.until(lambda d: d.find_element(By.ID, "token-detail").is_displayed() and d.find_element(By.ID, "inspect-status").text == "")
    return driver.find_elements(By.CSS_SELECTOR, "#attention-grid .head-cell")
