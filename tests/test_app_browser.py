"""``segcompass app`` in a real browser: headless Chromium (Selenium + the system chromedriver) drives the app
served on 127.0.0.1 with the embedded model: click an example, press Segment, read the reasoning and the overlay.

Skipped, with the reason, only when gradio, selenium, Chromium or chromedriver is missing (``tools/setup.sh``
installs all four when it runs as root with apt-get). The page may load nothing from outside 127.0.0.1.
A screenshot of the finished page is saved to ``tests/artifacts/app.png`` (git-ignored).
"""

import io
import json
import os
import shutil
import socket
import urllib.request
from pathlib import Path

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
gradio = pytest.importorskip("gradio", reason='gradio is not installed (pip install "segcompass[app]")')
webdriver = pytest.importorskip("selenium.webdriver", reason='selenium is not installed (pip install "segcompass[test]")')

from PIL import Image
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# The network is closed: without these flags Chromium hangs on connections it tries to open by itself.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000",
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
WAIT_S = 300  # generous (the whole test takes ~30 s): the model runs on shared CPU cores

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="no Chromium / chromedriver on PATH (apt-get install chromium chromium-driver; "
                                       "tools/setup.sh does it when run as root)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def embedded_pipe():
    from transformers import pipeline

    from segcompass.presets import default_model_path

    if default_model_path() is None:
        pytest.skip("this installation ships no embedded model")
    return pipeline("reasoning-segmentation", model=default_model_path())


@pytest.fixture
def served_app(embedded_pipe):
    from segcompass.app import build_app, default_examples, launch_app

    examples = default_examples()
    assert examples, "examples/images is missing from the checkout"
    demo = build_app(embedded_pipe, examples=examples)
    port = _free_port()
    launch_app(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", examples
    finally:
        demo.close()


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _requested_urls(driver) -> set[str]:
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            urls.add(message["params"]["url"])
    return urls


def test_app_in_chromium_segments_an_example(served_app, browser, embedded_pipe):
    url, examples = served_app
    image_path, instruction = examples[0]
    expected = embedded_pipe(Image.open(image_path), instruction)
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(url)

    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#examples [data-testid='dataset-cell-0-0']"))).click()
    text_box = "#instruction textarea, #instruction input"
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, text_box).get_attribute("value") == instruction)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image img"))  # the example image is in the input
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#segment"))).click()

    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#reasoning textarea").get_attribute("value"))
    overlay = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#overlay img")
                         if d.execute_script("const i = document.querySelector('#overlay img');"
                                             "return i !== null && i.complete && i.naturalWidth > 0;") else None)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#heatmaps img")) >= 1)

    assert browser.find_element(By.CSS_SELECTOR, "#reasoning textarea").get_attribute("value") == expected["reasoning"]
    with urllib.request.urlopen(overlay.get_attribute("src"), timeout=60) as response:  # served by the app
        picture = Image.open(io.BytesIO(response.read()))
        picture.load()
    assert picture.format == "PNG" and picture.width >= 384 and picture.height > picture.width
    status = browser.find_element(By.CSS_SELECTOR, "#status").text
    kept = [i["slot"] for i in expected["instances"]]
    assert (f"Found {len(kept)} instance" in status) if kept else ("No target" in status)
    concepts = browser.find_element(By.CSS_SELECTOR, "#concepts").text
    assert "kept" in concepts and "dropped" in concepts and f"f{expected['instances'][0]['concepts'][0]['feature']}" \
        in concepts

    ARTIFACTS.mkdir(exist_ok=True)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(max(height, 1000), 4000))
    browser.save_screenshot(str(ARTIFACTS / "app.png"))

    outside = sorted(u for u in _requested_urls(browser)
                     if u.split(":", 1)[0] in ("http", "https", "ws", "wss") and not u.split("//", 1)[1].startswith(
                         ("127.0.0.1", "localhost")))
    assert outside == [], f"the page reached outside the machine: {outside}"
