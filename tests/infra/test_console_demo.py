"""`riskmask demo --console`: the console opens on the demo's own stack; in headless Chromium the demo camera's
redacted frame updates while the demo streams its clip; the numbers equal the demo's own summary, the ledger and
an audit verdict show, the login URL is printed once, and the console closes with the demo."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.console_util import http, wait_until
from tests.infra.test_console_browser import ARTIFACTS, browser  # noqa: F401 - the Chromium fixture
from tests.infra.test_demo import DemoRun

pytestmark = pytest.mark.timeout(900)


def _watch_live_frame(browser, url: str, token: str, run: DemoRun, shot: Path) -> None:
    """In Chromium: the demo camera's frame is replaced by newer ones while the demo streams its clip."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{url}?token={token}")
    wait = WebDriverWait(browser, 300, poll_frequency=0.1)
    card = '.camera[data-camera="demo-cam-1"]'
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, card), message="the demo camera's card")
    img = browser.find_element(By.CSS_SELECTOR, card + " img.frame")
    loaded = "return arguments[0].complete && arguments[0].naturalWidth"
    wait.until(lambda d: d.execute_script(loaded, img), message="a first redacted frame")
    first = int(img.get_attribute("data-version"))
    wait.until(lambda d: int(img.get_attribute("data-version")) > first and d.execute_script(loaded, img),
               message="a newer redacted frame")
    assert browser.execute_script("return arguments[0].naturalWidth", img) == 640
    browser.save_screenshot(str(shot))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "console_demo.png")


def test_demo_opens_the_console(tmp_path: Path, browser) -> None:
    run = DemoRun(tmp_path / "state", tmp_path / "out", tmp_path / "demo.log", "--console", "--console-port", "0",
                  "--console-linger", "25", "--fps", "4")
    run.watch(until="console: http://", timeout_s=600)
    found = re.search(r"console: (http://127\.0\.0\.1:\d+/)\?token=(\S+)", run.text())
    assert found, run.text()[-3000:]
    url, token = found.group(1), found.group(2)
    assert http(url + "api/state").status_code == 401
    _watch_live_frame(browser, url, token, run, tmp_path / "console_demo.png")

    def demo_records():  # every produced frame comes back as one redacted frame or one dead letter
        s = http(url + "api/state", token=token).json()
        cam = {c["camera_id"]: c for c in s["cameras"]}.get("demo-cam-1", {})
        return s if cam.get("frames", 0) + cam.get("dlq", 0) >= 12 and s["ledger"]["nodes_up"] == 4 else None

    s = wait_until(demo_records, 600, "the demo camera's records in the console", poll_s=0.5)
    cam = {c["camera_id"]: c for c in s["cameras"]}["demo-cam-1"]
    assert s["ledger"]["height"] >= 1
    if cam["frames"]:
        assert sum(cam["masks_by_level"].values()) >= 1 and cam["latency_p50_ms"] > 0
        jpeg = http(url + "api/frame/demo-cam-1", token=token).content
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[:2] == (360, 640)
    run.watch(until="the console stays open", timeout_s=600)
    assert http(url + "api/audit", token=token, method="POST").status_code == 202
    verdict = wait_until(lambda: http(url + "api/audit", token=token).json().get("verdict"), 60, "the audit")
    assert verdict == "PASS"
    rc = run.finish(timeout_s=300)
    assert rc == 0, run.text()[-3000:]
    run.assert_nothing_left()
    assert run.text().count(token) == 1  # printed once
    summary = (tmp_path / "out" / "summary.json").read_text()
    assert token not in summary
    frames = json.loads(summary)["frames"]  # the console counted what the demo itself read back
    assert (cam["frames"], cam["dlq"]) == (frames["redacted"], frames["dead_letters"])
    time.sleep(0.5)
    import requests

    with pytest.raises(requests.ConnectionError):
        http(url + "health")  # closed with the demo
