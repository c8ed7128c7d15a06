"""``maskdn app``: the page's work (:func:`maskdn.app.process`) and the real page in headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from maskdn import denoise, zoo
from maskdn.app import NO_NOISE, process
from maskdn.demo import sample_paths
from maskdn.errors import MaskdnError
from maskdn.io import read_image, to_float_rgb, write_image
from maskdn.metrics import psnr
from maskdn.noise import apply_noise, noise_seed

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A 40×48 crop of a bundled Kodak sample, as PNG."""
    path = tmp_path_factory.mktemp("in") / "crop.png"
    write_image(path, read_image(sample_paths()[0])[60:100, 80:128])
    return path


def test_noise_added_gives_scores_and_the_file(photo, tmp_path):
    r = process(photo, "baseline-small", noise="gaussian:25", seed=3, out_dir=tmp_path)
    clean, _ = to_float_rgb(read_image(photo))
    noisy = apply_noise(clean, "gaussian:25", seed=noise_seed(3, photo.name, "gaussian:25"))
    assert r.scores["noisy"][0] == pytest.approx(psnr(noisy, clean))
    assert r.scores["denoised"][0] > r.scores["noisy"][0] + 3
    assert r.download == tmp_path / "crop_denoised.png"
    noisy_u8 = (noisy.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(read_image(r.download), denoise(noisy_u8, "baseline-small", seed=3))
    assert r.noisy.shape == r.denoised.shape == (40, 48, 3) and r.uncertainty is None
    assert "PSNR" in r.metrics and "gaussian:25" in r.metrics


def test_no_noise_no_scores_and_the_input_format_kept(photo, tmp_path):
    u16 = (read_image(photo).astype(np.uint16) * 257)[..., 0]  # 16-bit gray TIFF
    src = write_image(tmp_path / "gray16.tif", u16)
    r = process(src, "baseline-small", noise=NO_NOISE, out_dir=tmp_path / "out")
    out = read_image(r.download)
    assert r.download.name == "gray16_denoised.tif" and out.dtype == np.uint16 and out.shape == u16.shape
    assert r.scores == {} and "No clean image" in r.metrics
    assert r.noisy.dtype == np.uint8 and r.noisy.shape == (40, 48, 3)


def test_masked_model_gives_the_uncertainty_figure(photo, tmp_path):
    r = process(photo, "masked-small", passes=2, out_dir=tmp_path)
    assert r.uncertainty is not None and r.uncertainty.ndim == 3 and r.uncertainty.shape[2] == 3
    assert process(photo, "masked-small", passes=1, out_dir=tmp_path).uncertainty is None


def test_bad_inputs_are_one_line(photo, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    for kwargs, match in (({"path": fake}, "notes.png"), ({"path": photo, "noise": "gaussian:-3"}, "gaussian"),
                          ({"path": photo, "model": "no-such-model"}, "no-such-model"),
                          ({"path": photo, "passes": 0}, "passes")):
        with pytest.raises(MaskdnError, match=match) as e:
            process(out_dir=tmp_path, **kwargs)
        assert "\n" not in str(e.value)


# -- the page in a real browser ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no system Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    pytest.importorskip("gradio", reason="the app extra (gradio) is not installed")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def test_the_page_in_a_browser(browser, photo, tmp_path):
    """Upload, denoise, drag the before/after slider, download: in headless Chromium."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from maskdn.app import launch

    blocks = launch(port=_free_port(), out_dir=tmp_path / "results")
    try:
        d = browser
        d.get(blocks.local_url)
        wait = WebDriverWait(d, 600)  # an upper bound for a loaded machine; unloaded it takes seconds
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))
        upload.send_keys(str(photo))
        wait.until(lambda d: photo.stem in _text(d, "upload"))  # the page shows "crop" and ".png" apart
        d.find_element(By.ID, "run").click()
        wait.until(lambda d: "crop.png" in _text(d, "metrics"))
        assert "No clean image" in _text(d, "metrics")
        images = d.find_elements(By.CSS_SELECTOR, "#compare img")
        assert len(images) == 2 and all(i.get_attribute("src") for i in images)
        # the before/after slider: dragging its handle left uncovers more of the denoised image
        handle = d.find_element(By.CSS_SELECTOR, "#compare [data-testid=slider] .icon-wrap")
        before, shown = handle.location["x"], _shown_from(d)
        ActionChains(d).click_and_hold(handle).move_by_offset(-60, 0).release().perform()
        assert handle.location["x"] < before - 20 and _shown_from(d) < shown - 5
        if path := os.environ.get("MASKDN_APP_SCREENSHOT"):
            d.save_screenshot(path)
        d.find_element(By.ID, "download").click()
        target = browser.downloads / "crop_denoised.png"
        deadline = time.monotonic() + 60
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert target.exists()
        assert np.array_equal(read_image(target), read_image(tmp_path / "results" / "crop_denoised.png"))
        assert np.array_equal(read_image(target), denoise(read_image(photo), zoo.DEFAULT_MODEL, seed=0))  # the page's model
        # a bad upload: the command line's one-line message on the page, naming the file
        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        d.get(blocks.local_url)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]")).send_keys(str(bad))
        wait.until(lambda d: bad.stem in _text(d, "upload"))
        d.find_element(By.ID, "run").click()
        wait.until(lambda d: "notes.png: not an image" in d.execute_script("return document.body.textContent"))
    except Exception:
        browser.save_screenshot(str(tmp_path / "failure.png"))  # what the page showed, for the log
        raise
    finally:
        blocks.close()


def _text(driver, element_id: str) -> str:
    """All the text inside the element ``element_id`` (``textContent``: also what is laid out off screen)."""
    return driver.execute_script("const e = document.getElementById(arguments[0]); return e ? e.textContent : '';",
                                 element_id)


def _shown_from(driver) -> float:
    """Where the denoised image starts, in % of the width (its CSS ``clip-path: inset(0 0 0 X%)``)."""
    from selenium.webdriver.common.by import By

    style = driver.find_element(By.CSS_SELECTOR, "#compare img.fixed").get_attribute("style")
    left = style.split("inset(")[1].split(")")[0].split()[-1]
    return float(left.rstrip("%")) if left.endswith("%") else float(left.rstrip("px"))
