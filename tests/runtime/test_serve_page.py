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


def test_page_shows_mask_and_cutout_of_an_uploaded_image(browser, page_server, tmp_path):
    from selenium.webdriver.common.by import By

    html = call(page_server.port, "GET", "/").body.decode()
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere: works offline
    image = tmp_path / "upload.png"
    rng = np.random.default_rng(5)
    cv2.imwrite(str(image), cv2.resize(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8), (180, 120)))

    browser.get(f"http://127.0.0.1:{page_server.port}/")
    browser.find_element(By.ID, "file").send_keys(str(image))
    _wait_for_answer(browser)
    status = browser.find_element(By.ID, "status").text
    assert "Failed" not in status and "180x120" in status and " ms" in status, status
    assert browser.find_element(By.ID, "build").text == "build: lite-test (onnxruntime, fp32)"
    sizes = browser.execute_script(
        "return ['original', 'mask', 'cutout'].map(id => { const i = document.getElementById(id); "
        "return [i.complete, i.naturalWidth, i.naturalHeight]; });")
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
    browser.get(f"http://127.0.0.1:{page_server.port}/")
    browser.find_element(By.ID, "file").send_keys(str(broken))
    _wait_for_answer(browser)
    status = browser.find_element(By.ID, "status")
    assert status.get_attribute("className") == "error"
    assert status.text.startswith("Failed: request body: truncated PNG"), status.text


def test_page_shows_the_cutout_of_a_format_the_browser_cannot_show(browser, page_server, tmp_path):
    from selenium.webdriver.common.by import By

    image = tmp_path / "scan.tiff"
    rng = np.random.default_rng(6)
    cv2.imwrite(str(image), cv2.resize(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8), (90, 60)))
    browser.get(f"http://127.0.0.1:{page_server.port}/")
    browser.find_element(By.ID, "file").send_keys(str(image))
    _wait_for_answer(browser)
    status = browser.find_element(By.ID, "status").text
    assert "Failed" not in status and "90x60" in status, status
    sizes = browser.execute_script(
        "return ['mask', 'cutout'].map(id => { const i = document.getElementById(id); "
        "return [i.complete, i.naturalWidth, i.naturalHeight]; });")
    assert sizes == [[True, 90, 60]] * 2, sizes
    assert browser.find_element(By.ID, "download-cutout").get_attribute("href").startswith("data:image/png;base64,")
