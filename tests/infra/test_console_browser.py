"""The console in a real headless Chromium (system browser, Selenium) against a real broker, a real 4-node ledger
and a camera stream in its own process: the page loads, the live frame updates, counters move, the ledger shows,
an audit verdict appears, and nothing is shown without the token. A redacted video plays to its end.
A screenshot of the console is kept in tests-artifacts/ (and the pytest temp folder)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.console_util import ROOT, start_console, topic_args, topics
from tests.ledger_util import make_cluster

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "tests-artifacts"
CAMERA = "lobby-1"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert Path(path).exists(), f"{path} missing: scripts/test.sh installs chromium and chromium-driver"
    profile = tempfile.mkdtemp(prefix="riskmask-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1400,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, kafka_bootstrap):
    base = tmp_path_factory.mktemp("console-ledger")
    cluster = make_cluster(base / "ledger")
    cluster.up(wait_height=1, timeout_s=90)
    t = topics(kafka_bootstrap)
    console = start_console(["--bootstrap", kafka_bootstrap, "--ledger-dir", str(base / "ledger"), *topic_args(t)])
    try:
        yield {"console": console, "topics": t, "cluster": cluster}
    finally:
        console.stop()
        cluster.down()


def _wait(driver, cond, timeout_s: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(lambda d: cond(d), message=what)


def _text(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def test_console_in_chromium(browser, stack, kafka_bootstrap, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    c, t = stack["console"], stack["topics"]
    # without the token: the login form, no data
    browser.get(c.url)
    assert "Log in" in browser.page_source and "ledger-height" not in browser.page_source
    browser.get(c.url + "api/state")
    assert "login token required" in browser.page_source and CAMERA not in browser.page_source

    stream = subprocess.Popen([sys.executable, "-m", "tests.infra.console_stream", kafka_bootstrap, t["raw"],
                               t["redacted"], t["dlq"], CAMERA, "40", "4"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        browser.get(c.login_url)  # token exchanged for a cookie, then redirected to the page
        assert browser.current_url == c.url and "token" not in browser.current_url
        _wait(browser, lambda d: _text(d, "#conn") == "live", 20, "the event stream")
        card = f'.camera[data-camera="{CAMERA}"]'
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, card), 40, "the camera's card")
        img = browser.find_element(By.CSS_SELECTOR, card + " img.frame")
        _wait(browser, lambda d: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                         img), 20, "the first frame")
        v1, src1 = int(img.get_attribute("data-version")), img.get_attribute("src")
        frames1 = int(_text(browser, "#total-frames"))
        _wait(browser, lambda d: int(img.get_attribute("data-version")) >= v1 + 3, 20, "newer frames")
        _wait(browser, lambda d: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                         img), 10, "the newer frame to load")
        assert img.get_attribute("src") != src1
        assert browser.execute_script("return arguments[0].naturalWidth", img) == 512
        _wait(browser, lambda d: int(_text(d, "#total-frames")) > frames1 + 3, 20, "the frame counter to move")
        _wait(browser, lambda d: _text(d, card + " .dlq") not in ("0", "-"), 20, "a dead letter")
        fps = float(_text(browser, card + " .fps"))
        assert 1.0 <= fps <= 8.0, fps
        assert "gaussian:" in _text(browser, card + " .levels") and "ms" in _text(browser, card + " .latency")
        assert _text(browser, card + " .lag").isdigit()
        _wait(browser, lambda d: _text(d, "#nodes-up") == "4 / 4", 20, "four ledger nodes up")
        assert int(_text(browser, "#ledger-height")) >= 1 and "ago" in _text(browser, "#last-block")
        # the stream's frames were made with the watchlist read at height 1: its age in blocks and time
        _wait(browser, lambda d: re.fullmatch(r"height 1, \d+ block\(s\) behind, [\d.]+ (s|min) ago",
                                              _text(d, "#watchlist")), 20, "the watchlist age")
        browser.find_element(By.ID, "audit-run").click()
        _wait(browser, lambda d: _text(d, "#audit-verdict") in ("PASS", "FAIL", "ERROR"), 60, "the audit verdict")
        assert _text(browser, "#audit-verdict") == "PASS", _text(browser, "#audit-detail")
        assert "block(s) up to height" in _text(browser, "#audit-detail")
        shot = tmp_path / "console.png"
        browser.save_screenshot(str(shot))
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(shot, ARTIFACTS / "console.png")
        assert shot.stat().st_size > 20_000
    finally:
        stream.terminate()
        stream.communicate(timeout=15)
    # the cookie gone: refused again
    browser.delete_all_cookies()
    browser.get(c.url + "api/state")
    assert "login token required" in browser.page_source


def test_audit_in_chromium_names_the_first_bad_block(browser, stack, kafka_bootstrap) -> None:
    import dataclasses
    import uuid

    from selenium.webdriver.common.by import By

    from infra import broker
    from ledger.client.api_client import LedgerClient
    from ledger.ops import exporter
    from schemas.messages import LedgerBlock
    from tests.console_util import produce

    cluster = stack["cluster"]
    good = f"ledger-good-{uuid.uuid4().hex[:8]}"
    broker.create_topics(kafka_bootstrap, [good])
    exp = exporter.Exporter(kafka_bootstrap, good, [LedgerClient(cluster.api_address(i), cluster.key_seed("auditor"))
                                                    for i in range(cluster.n)], cluster.genesis.chain_id)
    exp.start()
    while exp.step():
        pass
    exp.close()
    msgs = [LedgerBlock.from_bytes(v) for _, v in exporter.read_range(kafka_bootstrap, good)]
    assert len(msgs) >= 5
    bad = msgs[3]
    sig = bytearray(bad.commit[0].signature)
    sig[5] ^= 0x40  # one flipped bit in one validator's precommit signature
    msgs[3] = dataclasses.replace(bad, commit=(dataclasses.replace(bad.commit[0], signature=bytes(sig)),)
                                  + bad.commit[1:])
    tampered = f"ledger-tampered-{uuid.uuid4().hex[:8]}"
    broker.create_topics(kafka_bootstrap, [tampered])
    produce(kafka_bootstrap, tampered, [m.to_bytes() for m in msgs])
    t = topics(kafka_bootstrap)
    t["ledger"] = tampered
    console = start_console(["--bootstrap", kafka_bootstrap, "--ledger-dir", str(cluster.dir), "--no-export",
                             *topic_args(t)])
    try:
        browser.get(console.login_url)
        _wait(browser, lambda d: _text(d, "#conn") == "live", 20, "the event stream")
        browser.find_element(By.ID, "audit-run").click()
        _wait(browser, lambda d: _text(d, "#audit-verdict") in ("PASS", "FAIL", "ERROR"), 60, "the audit verdict")
        assert _text(browser, "#audit-verdict") == "FAIL"
        assert _text(browser, "#audit-bad") == (f"first bad block: block {bad.height} (offset 3): "
                                                "invalid precommit signature of validator 0")
    finally:
        console.stop()


def test_camera_id_is_shown_as_text_never_as_markup(browser, stack, kafka_bootstrap) -> None:
    """A record's camera id is attacker-controlled: it must be rendered as text, never parsed as HTML."""
    from selenium.webdriver.common.by import By

    from tests.console_util import produce, redacted_frame

    c, t = stack["console"], stack["topics"]
    evil = '<img src=x id=xss onerror="document.title=\'pwned\'"><b id=bold>cam</b>'
    browser.get(c.login_url)
    _wait(browser, lambda d: _text(d, "#conn") == "live", 20, "the event stream")
    produce(kafka_bootstrap, t["redacted"], [redacted_frame(evil, 0, b"\xff\xd8x\xff\xd9", ["gaussian"]).to_bytes()])
    _wait(browser, lambda d: any(e.get_attribute("data-camera") == evil
                                 for e in d.find_elements(By.CSS_SELECTOR, ".camera")), 30, "the camera's card")
    card = next(e for e in browser.find_elements(By.CSS_SELECTOR, ".camera") if e.get_attribute("data-camera") == evil)
    assert card.find_element(By.CSS_SELECTOR, ".camera-id").text == evil
    assert browser.find_elements(By.ID, "xss") == [] and browser.find_elements(By.ID, "bold") == []
    assert browser.title != "pwned"


def _serve(folder: Path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import requests

    deadline = time.monotonic() + 20
    while True:
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)
            return proc, port
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)


PLAY = """
const done = arguments[arguments.length - 1];
const v = document.createElement('video');
v.muted = true;
v.src = arguments[0];
document.body.appendChild(v);
v.addEventListener('ended', () => done({ended: true, duration: v.duration, width: v.videoWidth}));
v.addEventListener('error', () => done({ended: false, error: v.error ? v.error.code : -1}));
v.play().catch((e) => done({ended: false, error: String(e)}));
"""


def test_redacted_video_plays_in_chromium_and_keeps_audio(browser, tmp_path) -> None:
    import cv2

    from infra.sample_data import astronaut
    from pipelines.video_io import probe
    from tests.media_util import make_clip

    frames = [np.roll(astronaut(), 4 * i, axis=1) for i in range(10)]
    clip = make_clip(tmp_path / "in.mp4", frames, fps=10, metadata={"title": "entrance"})
    r = subprocess.run([sys.executable, "-P", "-m", "riskmask", "-q", "redact", str(clip)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "in_redacted.mp4"
    info = probe(out)
    assert info["audio"] and info["audio"][0]["codec"] == "aac" and info["video"][0]["codec"] == "h264"
    # control: what redact wrote before (OpenCV mp4v) does not play in the browser
    writer = cv2.VideoWriter(str(tmp_path / "mp4v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (512, 512))
    for f in frames:
        writer.write(f)
    writer.release()
    server, port = _serve(tmp_path)
    try:
        browser.set_script_timeout(30)
        browser.get(f"http://127.0.0.1:{port}/")
        res = browser.execute_async_script(PLAY, f"http://127.0.0.1:{port}/in_redacted.mp4")
        assert res["ended"] and res["duration"] > 0.9 and res["width"] == 512, res
        browser.get(f"http://127.0.0.1:{port}/")
        ctl = browser.execute_async_script(PLAY, f"http://127.0.0.1:{port}/mp4v.mp4")
        assert not ctl["ended"], ctl
    finally:
        server.terminate()
        server.wait(10)
