// riskmask console: renders the state the server pushes over server-sent events (no framework, no build step).
"use strict";

const cards = new Map();

function text(el, value) {
  el.textContent = value === null || value === undefined ? "-" : String(value);
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  return seconds < 120 ? seconds.toFixed(1) + " s ago" : Math.round(seconds / 60) + " min ago";
}

function card(cam) {
  let el = cards.get(cam.camera_id);
  if (!el) {
    el = document.getElementById("camera-template").content.firstElementChild.cloneNode(true);
    el.dataset.camera = cam.camera_id;
    text(el.querySelector(".camera-id"), cam.camera_id);
    el.querySelector(".frame").dataset.version = "0";
    document.getElementById("cameras").appendChild(el);
    cards.set(cam.camera_id, el);
  }
  return el;
}

function renderCamera(cam) {
  const el = card(cam);
  text(el.querySelector(".fps"), cam.fps.toFixed(1));
  text(el.querySelector(".frames"), cam.frames);
  text(el.querySelector(".lag"), cam.lag);
  text(el.querySelector(".latency"), cam.latency_p50_ms === null ? null :
       cam.latency_p50_ms + " / " + cam.latency_p99_ms + " ms");
  text(el.querySelector(".degraded"), cam.degraded);
  text(el.querySelector(".dlq"), cam.dlq);
  const levels = Object.entries(cam.masks_by_level).map(([k, v]) => k + ": " + v).join(", ");
  text(el.querySelector(".levels"), levels || "no faces");
  const img = el.querySelector(".frame");
  if (cam.frame_version > 0 && String(cam.frame_version) !== img.dataset.version) {
    img.dataset.version = String(cam.frame_version);
    img.src = "/api/frame/" + encodeURIComponent(cam.camera_id) + "?v=" + cam.frame_version;
  }
}

function render(s) {
  const led = s.ledger;
  text(document.getElementById("ledger-height"), led.height);
  text(document.getElementById("nodes-up"), led.nodes_total ? led.nodes_up + " / " + led.nodes_total : null);
  text(document.getElementById("last-block"), ago(led.last_block_age_s));
  const wl = s.watchlist;
  text(document.getElementById("watchlist"), wl.height === null ? "no watchlist in use" :
       "height " + wl.height + ", " + wl.blocks_behind + " block(s) behind" +
       (wl.age_s === null ? "" : ", " + ago(wl.age_s)));
  text(document.getElementById("total-cameras"), s.cameras.length);
  text(document.getElementById("total-frames"), s.totals.frames);
  text(document.getElementById("total-degraded"), s.totals.degraded);
  text(document.getElementById("total-dlq"), s.totals.dlq);
  const fe = document.getElementById("feed-error");
  fe.hidden = !s.feed_error;
  text(fe, s.feed_error || "");
  s.cameras.forEach(renderCamera);
  const a = s.audit;
  const verdict = a.state === "running" ? "running..." : (a.verdict || "not run");
  text(document.getElementById("audit-verdict"), verdict);
  document.getElementById("audit-verdict").className = "verdict-" + verdict.replace(/\W/g, "").toLowerCase();
  document.getElementById("audit-run").disabled = a.state === "running";
  text(document.getElementById("audit-detail"), a.state === "done" && a.verdict !== "ERROR" ?
       a.blocks + " block(s) up to height " + a.last_height + ", " + a.txs + " tx(s), " + a.anchors +
       " anchor(s), " + a.audit_blocks + " audit block(s), in " + a.seconds + " s" : (a.error || ""));
  const bad = document.getElementById("audit-bad");
  bad.hidden = !a.first_bad_block;
  text(bad, a.first_bad_block ? "first bad block: " + a.first_bad_block : "");
}

function connect() {
  const conn = document.getElementById("conn");
  const es = new EventSource("/api/events");
  es.addEventListener("state", (ev) => {
    conn.textContent = "live";
    conn.className = "badge live";
    render(JSON.parse(ev.data));
  });
  es.onerror = () => {
    conn.textContent = "disconnected";
    conn.className = "badge down";
  };
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("audit-run").addEventListener("click", async () => {
    const r = await fetch("/api/audit", {method: "POST", credentials: "same-origin"});
    if (!r.ok) {
      const body = await r.json().catch(() => ({error: r.statusText}));
      text(document.getElementById("audit-detail"), body.error);
    }
  });
  connect();
});
