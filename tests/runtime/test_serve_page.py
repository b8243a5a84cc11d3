"""The page at ``/`` in a real headless browser (Debian's Chromium through Selenium): upload, mask, cut-out."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from serving import call, running_server


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.skip("no Chromium here: the page test needs Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; .ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page_server(lite_artifact, tmp_path_factory):
    with running_server(lite_artifact, tmp_path_factory.mktemp("page")) as running:
        yield running


def _wait_for_answer(driver):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script("return document.body.dataset.done === '1' || "
                                   "document.getElementById('status').className === 'error'"))


def _picture(path, size: tuple[int, int], seed: int):
    """A blocky random picture of ``size`` (width, height) in the format of ``path``'s suffix."""
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(str(path), cv2.resize(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8), size))
    return path


def _upload(driver, server, image) -> str:
    """Open the page, choose ``image``, wait for the answer; the status line's text."""
    from selenium.webdriver.common.by import By

    driver.get(f"http://127.0.0.1:{server.port}/")
    driver.find_element(By.ID, "file").send_keys(str(image))
    _wait_for_answer(driver)
    return driver.find_element(By.ID, "status").text


def _panel_sizes(driver, *ids: str) -> list:
    """[loaded, natural width, natural height] of each of the page's images ``ids``."""
    return driver.execute_script("return arguments[0].map(id => { const i = document.getElementById(id); "
                                 "return [i.complete, i.naturalWidth, i.naturalHeight]; });", list(ids))


def test_page_shows_mask_and_cutout_of_an_uploaded_image(browser, page_server, tmp_path):
    from selenium.webdriver.common.by import By

    html = call(page_server.port, "GET", "/").body.decode()
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere: works offline
    status = _upload(browser, page_server, _picture(tmp_path / "upload.png", (180, 120), seed=5))
    assert "Failed" not in status and "180x120" in status and " ms" in status, status
    assert browser.find_element(By.ID, "build").text == "build: lite-test (onnxruntime, fp32)"
    sizes = _panel_sizes(browser, "original", "mask", "cutout")
    assert sizes == [[True, 180, 120]] * 3, sizes
    download = browser.find_element(By.ID, "download-mask")
    assert download.get_attribute("href").startswith("data:image/png;base64,")
    assert download.get_attribute("download") == "upload_mask.png"
    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot))
    shot = cv2.imread(str(screenshot))
    assert shot is not None and shot.shape[0] > 300 and shot.std() > 5  # a rendered page, not a blank one


def test_page_reports_a_refused_image(browser, page_server, tmp_path):
    from selenium.webdriver.common.by import By

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    _upload(browser, page_server, broken)
    status = browser.find_element(By.ID, "status")
    assert status.get_attribute("className") == "error"
    assert status.text.startswith("Failed: request body: truncated PNG"), status.text


def test_page_shows_the_cutout_of_a_format_the_browser_cannot_show(browser, page_server, tmp_path):
    from selenium.webdriver.common.by import By

    status = _upload(browser, page_server, _picture(tmp_path / "scan.tiff", (90, 60), seed=6))
    assert "Failed" not in status and "90x60" in status, status
    sizes = _panel_sizes(browser, "mask", "cutout")
    assert sizes == [[True, 90, 60]] * 2, sizes
    assert browser.find_element(By.ID, "download-cutout").get_attribute("href").startswith("data:image/png;base64,")
