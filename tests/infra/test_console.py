"""``riskmask console`` as a real process on a real broker: the token guards everything but /health, it listens
on loopback only, refuses foreign Host headers and cross-origin posts, never logs the token, and shows the
output topics' live numbers (redacted frames, masks by level, latency, lag, degraded, DLQ) with no identities."""

from __future__ import annotations

import json
import time

import pytest

from tests.console_util import (LEAK, dead_letter, http, produce, redacted_frame, redacted_frame_v1, start_console,
                                topic_args, topics, wait_until)

PROTECTED = [("GET", "/"), ("GET", "/api/state"), ("GET", "/api/events"), ("GET", "/api/frame/cam-1"),
             ("POST", "/api/audit"), ("GET", "/api/audit"), ("GET", "/static/console.js")]


@pytest.fixture(scope="module")
def console(kafka_bootstrap):
    t = topics(kafka_bootstrap)
    c = start_console(["--bootstrap", kafka_bootstrap, "--no-ledger", *topic_args(t)])
    c.topics = t
    yield c
    c.stop()


def test_requests_without_token_are_refused(console) -> None:
    assert http(console.url + "health").json() == {"status": "ok"}
    for method, path in PROTECTED:
        r = http(console.url + path.lstrip("/"), method=method, stream=True)
        assert r.status_code == 401, (method, path, r.status_code)
        assert b"riskmask" not in r.content or b"Log in" in r.content  # no data, only the login page
        r = http(console.url + path.lstrip("/"), token="wrong-" + console.token, method=method, stream=True)
        assert r.status_code == 401, (method, path, "wrong token")
    r = http(console.url + "?token=" + console.token[:-1] + "x")
    assert r.status_code == 401
    r = http(console.url + "api/state", token=console.token)
    assert r.status_code == 200 and "cameras" in r.json()


def test_token_url_sets_a_strict_cookie_and_redirects(console) -> None:
    r = http(console.url + "?token=" + console.token)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    value = r.cookies.get("riskmask_console")
    page = http(console.url, cookies={"riskmask_console": value})
    assert page.status_code == 200 and "riskmask console" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    r = http(console.url + "login", method="POST", data={"token": console.token})
    assert r.status_code == 303
    r = http(console.url + "login", method="POST", data={"token": "nope"})
    assert r.status_code == 401


def test_foreign_host_and_cross_origin_post_are_refused(console) -> None:
    r = http(console.url + "api/state", token=console.token, headers={"Host": f"attacker.example:{console.port}"})
    assert r.status_code == 400  # DNS rebinding: a page on another name cannot read the console
    r = http(console.url + "api/audit", token=console.token, method="POST",
             headers={"Origin": "http://attacker.example"})
    assert r.status_code == 403
    r = http(console.url + "api/audit", token=console.token, method="POST",
             headers={"Origin": f"http://127.0.0.1:{console.port}"})
    assert r.status_code == 409  # same origin reaches the handler (no ledger here)


def _listening_addresses(port: int) -> set[str]:
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":  # LISTEN
                found.add(addr)
    return found


def test_listens_on_loopback_only(console) -> None:
    assert _listening_addresses(console.port) == {"0100007F"}  # 127.0.0.1, nothing else


def _topics_ready(console) -> None:
    def ready() -> bool:
        r = http(console.url + "api/state", token=console.token).json()["topics_ready"]
        return len(r) == 3 and all(r.values())

    wait_until(ready, 30, "the console to be positioned on its topics")


def test_live_numbers_from_the_output_topics(console, kafka_bootstrap) -> None:
    t = console.topics
    _topics_ready(console)
    # offsets 0..9 on the raw topic, one record per batch as a paced camera sends them (the embedded broker
    # reports the base offset of the last batch as the end offset)
    produce(kafka_bootstrap, t["raw"], [b"raw-%d" % i for i in range(10)], one_by_one=True)
    frames = [redacted_frame("cam-1", i, b"\xff\xd8jpeg-%d\xff\xd9" % i, ["gaussian", "gaussian", "none"],
                             degraded=(i == 2), latency_ms=100.0 + 10 * i, source=(t["raw"], 0, i))
              for i in range(6)]
    produce(kafka_bootstrap, t["redacted"], [f.to_bytes() for f in frames], key=b"cam-1")
    produce(kafka_bootstrap, t["dlq"], [dead_letter("cam-1", 7).to_bytes(), b"garbage"])
    produce(kafka_bootstrap, t["redacted"], [b"not avro", redacted_frame_v1("cam-v1", 0, b"\xff\xd8v1\xff\xd9")])

    last = {}

    def state():
        s = last["s"] = http(console.url + "api/state", token=console.token).json()
        cams = {c["camera_id"]: c for c in s["cameras"]}
        ok = (cams.get("cam-1", {}).get("frames") == 6 and s["totals"]["dlq"] == 2 and cams["cam-1"]["lag"] == 4
              and cams.get("cam-v1", {}).get("frames") == 1)
        return s if ok else None

    try:
        s = wait_until(state, 30, "the console to count the produced records")
    except AssertionError:
        raise AssertionError(f"console state: {last.get('s')}") from None
    cam = {c["camera_id"]: c for c in s["cameras"]}["cam-1"]
    assert cam["masks_by_level"] == {"gaussian": 12, "none": 6}
    assert cam["degraded"] == 1 and cam["dlq"] == 1 and cam["fps"] > 0
    assert 100 <= cam["latency_p50_ms"] <= 160 and 140 <= cam["latency_p99_ms"] <= 160
    assert s["totals"]["undecodable"] == {"redacted": 1, "dlq": 1}
    jpeg = http(console.url + "api/frame/cam-1", token=console.token)
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content == frames[-1].image
    # no identity of any kind leaves the console, whatever the records carry (the v1 frame carried all of them)
    v1 = http(console.url + "api/frame/cam-v1", token=console.token)
    assert v1.content == b"\xff\xd8v1\xff\xd9"
    text = json.dumps(s) + http(console.url + "api/state", token=console.token).text
    for needle in (LEAK, "subject_ref", "track_id", "suspect", "identity", "risk_group", "4242"):
        assert needle not in text
    assert http(console.url + "api/frame/nosuch", token=console.token).status_code == 404


def test_events_stream_pushes_state(console) -> None:
    import requests

    with requests.get(console.url + "api/events", headers={"Authorization": f"Bearer {console.token}"},
                      stream=True, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = []
        t0 = time.monotonic()
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data: "):
                events.append(json.loads(line[6:]))
            if len(events) >= 2 or time.monotonic() - t0 > 10:
                break
    assert len(events) == 2 and events[1]["now"] > events[0]["now"]


def test_token_printed_once_and_never_logged(kafka_bootstrap) -> None:
    c = start_console(["--bootstrap", kafka_bootstrap, "--no-ledger"])
    try:
        http(c.url + "?token=" + c.token)
        http(c.url + "api/state", token=c.token)
        http(c.url + "api/state", token="bad")
    finally:
        out, err = c.stop()
    assert out.count(c.token) == 1 and c.token not in err


def test_bad_arguments_one_line(kafka_bootstrap, console) -> None:
    import subprocess
    import sys

    from tests.console_util import ROOT

    r = subprocess.run([sys.executable, "-P", "-m", "riskmask", "console", "--bootstrap", kafka_bootstrap,
                        "--no-ledger", "--port", str(console.port)], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "cannot listen" in r.stderr
    r = subprocess.run([sys.executable, "-P", "-m", "riskmask", "console", "--bootstrap", kafka_bootstrap,
                        "--ledger-dir", "/nonexistent/ledger"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "cannot read the ledger" in r.stderr
