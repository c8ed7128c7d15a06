"""Screenshot of `maskdn app` for docs/app.png: a bundled sample with Gaussian σ=25 added, masked-small, 4 passes.

    python tools/app_screenshot.py docs/app.png

Drives the page in headless Chromium (Debian's chromium and chromium-driver, through Selenium), as
tests/test_app.py does, with the slider dragged a little left of the middle and the uncertainty map shown.
"""
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from maskdn.app import launch
from maskdn.demo import sample_paths


def main(out: str) -> None:
    blocks = launch(port=7869)
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1500"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        d.get(blocks.local_url)
        wait = WebDriverWait(d, 600)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]")).send_keys(str(sample_paths()[3]))
        for box, value in (("#model input", "masked-small"), ("#noise input", "gaussian:25")):
            field = d.find_element(By.CSS_SELECTOR, box)
            field.click()
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(value, Keys.ENTER)
        passes = d.find_element(By.CSS_SELECTOR, "#passes input[type=number]")
        passes.send_keys(Keys.CONTROL, "a")
        passes.send_keys("4", Keys.TAB)
        time.sleep(1)
        d.find_element(By.ID, "run").click()
        wait.until(lambda d: "PSNR" in d.execute_script("return document.getElementById('metrics').textContent"))
        handle = d.find_element(By.CSS_SELECTOR, "#compare [data-testid=slider] .icon-wrap")
        ActionChains(d).click_and_hold(handle).move_by_offset(-80, 0).release().perform()
        time.sleep(1)
        d.save_screenshot(out)
    finally:
        d.quit()
        blocks.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/app.png")
