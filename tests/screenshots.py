"""Refresh the README's screenshots from a trained run: `make screenshots [RUN=runs/demo]`.

    python tests/screenshots.py RUN OUT_DIR

Serves RUN, generates a story in the playground (OUT_DIR/playground.png), then looks inside a
text in the Inspect view, clicks one of its surprising tokens and paints the text with the attention
head that weighs one earlier token most (OUT_DIR/inspect.png). Needs Chromium (see chromium.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from chromium import FOUND, MISSING, chromium, click_token, inspect_text, serving

PROMPT = "Once upon a time, there was a little fox"
TEXT = (
    "Once upon a time, there was a little girl named Lily. She loved to play with her red ball in the park. "
    "One day, a big dragon came to the park. Lily was scared, but the dragon smiled and said, \"Do you want to play?\""
)
CLICK = " dragon"  # the token clicked, when the tokenizer has it whole
WIDTH = 1100


def playground(driver, wait, out: Path) -> None:
    find = driver.find_element
    find(By.ID, "prompt").send_keys(PROMPT)
    for name, value in (("max-tokens", "160"), ("seed", "3")):
        find(By.ID, name).clear()
        find(By.ID, name).send_keys(value)
    find(By.ID, "generate").click()
    wait.until(lambda d: find(By.ID, "status").text.startswith("done") and find(By.ID, "inspect-story").is_displayed())
    fit(driver, "inspect-story")
    save(driver, out / "playground.png")


def inspect(driver, wait, out: Path) -> None:
    driver.set_window_size(WIDTH, 1000)
    inspect_text(driver, wait, TEXT)
    spans = driver.find_elements(By.CSS_SELECTOR, "#tokens .token:not(.context)")
    chosen = next((s for s in spans if s.get_attribute("textContent") == CLICK), spans[len(spans) // 2])
    before = spans[spans.index(chosen) - 1].get_attribute("textContent").replace(" ", "␣")
    click_token(driver, wait, chosen)
    fit(driver, "token-detail")
    # the head that weighs the token just before the clicked one most (else any head): its cell shows the key and weight
    cells = driver.find_elements(By.CSS_SELECTOR, "#attention-grid .head-cell")
    weight = {c: float(c.find_element(By.CLASS_NAME, "prob").text.rstrip("%")) for c in cells}
    on_before = [c for c in cells if c.find_element(By.CLASS_NAME, "piece").text == before]
    best = max(on_before or cells, key=weight.get)
    ActionChains(driver).move_to_element(best).click().perform()  # a click pins it
    driver.execute_script("window.scrollTo(0, 0)")
    save(driver, out / "inspect.png")


def save(driver, path: Path) -> None:
    if not driver.save_screenshot(str(path)):  # selenium says False rather than raising
        raise OSError(f"could not write {path}")


def fit(driver, element_id: str) -> None:
    """Make the window as tall as the page down to the bottom of an element."""
    bottom, chrome = driver.execute_script(
        f"return [document.getElementById('{element_id}').getBoundingClientRect().bottom + window.scrollY,"
        " window.outerHeight - window.innerHeight]")  # the window's own bars take part of its height
    driver.set_window_size(WIDTH, int(bottom) + 40 + chrome)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a trained run or checkpoint folder")
    parser.add_argument("out", type=Path, help="where the PNGs go (docs/)")
    args = parser.parse_args()
    if not FOUND:
        print(f"screenshots: {MISSING}", file=sys.stderr)
        return 1
    if not args.run.exists():
        print(f"screenshots: no run at {args.run}: train one first (make demo)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="tinygpt-screenshots-") as tmp,
        serving(args.run, Path(tmp) / "serve.log") as url,
        chromium(Path(tmp) / "profile", WIDTH) as driver,
    ):
        wait = WebDriverWait(driver, 120, poll_frequency=0.05)
        driver.get(url)
        wait.until(lambda d: d.find_element(By.ID, "model-name").text not in ("", "loading model…"))
        playground(driver, wait, args.out)
        inspect(driver, wait, args.out)
    print(f"wrote {args.out / 'playground.png'} and {args.out / 'inspect.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
