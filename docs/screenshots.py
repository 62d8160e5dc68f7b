"""The README's screenshots of `oldphoto review`, over `make demo`'s output, in headless Chromium:
    python docs/screenshots.py [out/demo/restored]"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

HERE = Path(__file__).resolve().parent
PORT = 8791


def main(dst: str = "out/demo/restored") -> None:
    server = subprocess.Popen([sys.executable, "-m", "oldphoto.cli", "review", dst, "--port", str(PORT)])
    base = f"http://127.0.0.1:{PORT}"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,760"):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))
    wait = WebDriverWait(browser, 20)
    try:
        for _ in range(100):
            try:
                httpx.get(base + "/favicon.ico")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        # A curator's first decisions, so that the grid shows them.
        httpx.post(base + "/api/decisions", json={"key": "chelsea.png", "decision": "accept"})
        httpx.post(base + "/api/decisions", json={"key": "rocket.png", "decision": "redo", "note": "grain kept in the sky",
                                                  "settings": {"scratch": "on"}})
        browser.get(base)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#grid .card"))
        browser.find_element(By.CSS_SELECTOR, "#filters button[data-filter=all]").click()
        cards = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#grid .card[data-key='rocket.png']") and
                           b.find_elements(By.CSS_SELECTOR, "#grid .card"))
        wait.until(lambda b: all(b.execute_script("return arguments[0].complete", i) for i in b.find_elements(By.CSS_SELECTOR, "#grid img")))
        browser.save_screenshot(str(HERE / "review-grid.png"))
        cards[1].click()  # camera
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#after-layer img"))
        slider = browser.find_element(By.ID, "slider")
        browser.execute_script("arguments[0].value = 45; arguments[0].dispatchEvent(new Event('input'))", slider)
        browser.find_element(By.ID, "show-mask").click()
        browser.find_element(By.ID, "note").send_keys("tripod legs smeared where the mask is wide")
        time.sleep(1.5)
        browser.save_screenshot(str(HERE / "review-photo.png"))
    finally:
        browser.quit()
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main(*sys.argv[1:])
