"""The HTML and JavaScript of ``/judge`` (served by ``app.judge_routes``): two images of one
prompt and seed, keys ← / → / ↓ (or buttons) for left / right / tie, optional reason tags
(1, 2, 3), the next pair prefetched and decoded while the judge looks at this one. Nothing in
this page names a run, a step or an algorithm; images come as blobs of opaque tokens."""

from __future__ import annotations

import json

from grpo_guard.judging.sessions import REASONS

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 0; background: #f8fafc; color: #0f172a; }
header { display: flex; justify-content: space-between; align-items: center; padding: 10px 24px;
  background: #fff; border-bottom: 1px solid #e2e8f0; }
header a { color: #1d4ed8; text-decoration: none; font-weight: 600; }
main { max-width: 980px; margin: 0 auto; padding: 16px 24px; }
#judge-prompt { font-size: 1.25em; font-weight: 600; text-align: center; margin: 8px 0 14px; min-height: 1.5em; }
.pair { display: flex; gap: 24px; justify-content: center; }
.pair figure { margin: 0; text-align: center; }
.pair img { width: 384px; height: 384px; object-fit: contain; image-rendering: pixelated; background: #e2e8f0;
  border-radius: 8px; border: 3px solid transparent; }
.pair figcaption { color: #64748b; margin-top: 6px; }
.choices { display: flex; justify-content: center; gap: 12px; margin: 16px 0 8px; }
button { font-size: 1em; padding: 8px 18px; border-radius: 8px; border: 1px solid #cbd5e1; background: #fff; cursor: pointer; }
button.primary { background: #2563eb; color: #fff; border-color: #2563eb; }
.reasons { display: flex; justify-content: center; gap: 8px; margin-bottom: 10px; }
.reason[aria-pressed="true"] { background: #dbeafe; border-color: #2563eb; color: #1e3a8a; }
#judge-progress { color: #475569; }
#judge-error { color: #991b1b; text-align: center; min-height: 1.2em; }
#judge-done, #judge-name-box { text-align: center; padding: 40px 0; }
.hint { text-align: center; color: #64748b; font-size: 0.9em; }
"""

JS = r"""
const $ = (id) => document.getElementById(id);
const state = { name: ASK_NAME ? localStorage.getItem("gg-judge-name") : null, current: null, next: null,
                busy: false, shownAt: 0 };
// latencies: ms from a choice's key press to the next pair on screen; prefetched: the next pair is decoded
window.ggJudge = { latencies: [], shown: 0, errors: [], ready: false, finished: false, prefetched: false };

function fail(e) { const m = String(e && e.message || e); window.ggJudge.errors.push(m); $("judge-error").textContent = m; }

async function api(path, body) {
  const r = await fetch(path, { method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
                                body: JSON.stringify(Object.assign({ session: SESSION, name: state.name }, body)) });
  const data = await r.json().catch(() => ({ error: "the server answered " + r.status }));
  if (!r.ok) { if (r.status === 401) location.reload(); throw new Error(data.error || ("HTTP " + r.status)); }
  return data;
}

async function loadImage(url) {
  const r = await fetch(url, { credentials: "same-origin" });
  if (!r.ok) throw new Error("an image could not be loaded (" + r.status + ")");
  const src = URL.createObjectURL(await r.blob());
  const im = new Image();
  im.src = src;
  await im.decode();  // decoded before it is needed: showing it is a swap
  return src;
}

async function fetchTrial(reset) {
  const t = await api("judge/api/next", { reset: !!reset });
  if (!t.trial) return t;
  [t.leftSrc, t.rightSrc] = await Promise.all([loadImage(t.left), loadImage(t.right)]);
  return t;
}

function progress(done, total) { $("judge-progress").textContent = done + " / " + total + " judged"; }

function finish(done, total) {
  $("judge-pair").hidden = true;
  $("judge-done").hidden = false;
  progress(done, total);
  window.ggJudge.finished = true;
}

async function show(t) {
  state.current = t;
  if (!t || !t.trial) { finish(t ? t.done : 0, t ? t.total : 0); return; }
  $("judge-prompt").textContent = t.prompt;
  const l = $("judge-left"), r = $("judge-right");
  l.src = t.leftSrc; r.src = t.rightSrc;
  await Promise.all([l.decode(), r.decode()]).catch(() => {});
  document.querySelectorAll(".reason").forEach((b) => b.setAttribute("aria-pressed", "false"));
  state.shownAt = performance.now();
}

async function choose(choice) {
  const t = state.current;
  if (!t || !t.trial || state.busy) return;
  state.busy = true;
  if (document.activeElement && document.activeElement.blur) document.activeElement.blur();  // no Enter re-click
  const t0 = performance.now();
  const reasons = [...document.querySelectorAll('.reason[aria-pressed="true"]')].map((b) => b.dataset.reason);
  const posted = api("judge/api/choose", { trial: t.trial, choice, reasons, decide_ms: Math.round(t0 - state.shownAt) })
    .then((d) => { progress(d.done, d.total); return d; });
  let nxt = null;
  try { nxt = await state.next; } catch (e) { nxt = null; }
  if (!nxt) { try { nxt = await fetchTrial(false); } catch (e) { fail(e); state.busy = false; return; } }
  await show(nxt);
  await new Promise((res) => requestAnimationFrame(() => res()));
  window.ggJudge.latencies.push(performance.now() - t0);
  window.ggJudge.shown += 1;
  URL.revokeObjectURL(t.leftSrc); URL.revokeObjectURL(t.rightSrc);
  prefetch(nxt && nxt.trial);
  state.busy = false;
  try { const d = await posted; $("judge-error").textContent = ""; if (!nxt.trial) finish(d.done, d.total); }
  catch (e) { fail(e); }
}

function prefetch(more) {
  window.ggJudge.prefetched = false;
  state.next = more ? fetchTrial(false) : null;
  if (state.next) state.next.then(() => { window.ggJudge.prefetched = true; }, () => {});
  else window.ggJudge.prefetched = true;
}

function toggle(i) {
  const b = document.querySelectorAll(".reason")[i];
  if (b) b.setAttribute("aria-pressed", b.getAttribute("aria-pressed") === "true" ? "false" : "true");
}

document.addEventListener("keydown", (e) => {
  if (e.target && e.target.tagName === "INPUT") return;
  const k = { ArrowLeft: "left", ArrowRight: "right", ArrowDown: "tie" }[e.key];
  if (k) { e.preventDefault(); if (!e.repeat) choose(k); return; }
  if (["1", "2", "3"].includes(e.key)) toggle(Number(e.key) - 1);
});

async function start() {
  $("judge-name-box").hidden = true;
  $("judge-pair").hidden = false;
  try {
    const first = await fetchTrial(true);
    progress(first.done, first.total);
    await show(first);
    prefetch(first.trial);
    window.ggJudge.ready = true;
  } catch (e) { fail(e); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("judge-btn-left").onclick = () => choose("left");
  $("judge-btn-right").onclick = () => choose("right");
  $("judge-btn-tie").onclick = () => choose("tie");
  document.querySelectorAll(".reason").forEach((b, i) => { b.onclick = () => toggle(i); });
  $("judge-name-form").onsubmit = (e) => {
    e.preventDefault();
    const v = $("judge-name").value.trim();
    if (!v) return;
    state.name = v;
    localStorage.setItem("gg-judge-name", v);
    start();
  };
  if (ASK_NAME && !state.name) { $("judge-name-box").hidden = false; $("judge-pair").hidden = true; $("judge-name").focus(); }
  else start();
});
"""


def judge_html(session_id: int, *, ask_name: bool) -> str:
    """The judging page of one session. ``ask_name``: no login on this server, so the judge
    types a name once (kept in the browser's localStorage)."""
    reasons = "".join(f'<button class="reason" type="button" aria-pressed="false" data-reason="{r}">{i + 1} · {r}</button>'
                      for i, r in enumerate(REASONS))
    head = f"const SESSION = {int(session_id)}; const ASK_NAME = {json.dumps(bool(ask_name))};"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Judge · session {int(session_id)}</title>
<meta name="referrer" content="no-referrer"><style>{CSS}</style><script>{head}{JS}</script></head>
<body><header><b>Human gold · session {int(session_id)}</b><span id="judge-progress"></span>
<a href="judgments">All sessions</a></header>
<main>
<div id="judge-name-box" hidden><form id="judge-name-form"><p>Who is judging? (typed once; kept in this browser)</p>
<input id="judge-name" maxlength="80" autocomplete="name"> <button class="primary" type="submit">Start</button></form></div>
<div id="judge-pair">
<div id="judge-prompt"></div>
<div class="pair"><figure><img id="judge-left" alt="left image"><figcaption>left (←)</figcaption></figure>
<figure><img id="judge-right" alt="right image"><figcaption>right (→)</figcaption></figure></div>
<div class="choices"><button id="judge-btn-left" class="primary">← Left is better</button>
<button id="judge-btn-tie">↓ Tie</button><button id="judge-btn-right" class="primary">Right is better →</button></div>
<div class="reasons">{reasons}</div>
<p class="hint">Which image is better for the prompt? Optional reasons: keys 1–3. Runs and steps stay hidden.</p>
</div>
<div id="judge-done" hidden><h2>All pairs judged. Thank you!</h2>
<p><a href="judgments?session={int(session_id)}" id="judge-results-link">See the results</a></p></div>
<div id="judge-error" role="alert"></div>
</main></body></html>"""


def login_html() -> str:
    """Sign-in form for /judge on a server with a login: posts to Gradio's own /login (which
    sets the session cookie the whole UI shares), then reloads."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in to judge</title><style>{CSS}</style></head>
<body><main><div id="judge-name-box"><h2>Sign in to judge</h2>
<form id="judge-login"><p><input id="judge-user" placeholder="user" autocomplete="username"></p>
<p><input id="judge-pass" type="password" placeholder="password" autocomplete="current-password"></p>
<button class="primary" type="submit">Sign in</button></form><div id="judge-error"></div></div></main>
<script>
document.getElementById("judge-login").onsubmit = async (e) => {{
  e.preventDefault();
  const body = new URLSearchParams({{ username: document.getElementById("judge-user").value,
                                     password: document.getElementById("judge-pass").value }});
  const r = await fetch("login", {{ method: "POST", body, credentials: "same-origin" }});
  if (r.ok) location.reload(); else document.getElementById("judge-error").textContent = "Incorrect user or password.";
}};
</script></body></html>"""
