// genbridge web console: one WebSocket to the daemon (JSON), a page that shows its state and
// sends the same requests as OSC. No build step, no libraries: plain DOM, updated in place.
"use strict";

// Beyond loopback the page is opened as /?token=T once: the daemon answers with an HttpOnly
// cookie that every later request (the files, the clips, the WebSocket) carries, so the token is
// taken out of the address bar at once and never appears in a URL the page hands out (a dragged
// clip, a download link, a bookmark, a Referer).
if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname);
const MAX_CLIPS = 500;        // DOM cap: the session folder's index.html lists the rest
const WAVE_FETCHES = 4;       // waveform downloads at once, so a long session never floods the daemon
const $ = (sel, root = document) => root.querySelector(sel);

const conn = { ws: null, retry: 0, nextId: 1 };
const state = { endpoints: new Map(), clipsTotal: 0, status: null };

// ------------------------------------------------------------------ small helpers

// Build an element: attrs (class, text, on*, else attributes; null/false skipped) and children.
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

// Set text only when it changed: status ticks every second, most of the page stays the same.
function setText(node, text) {
  text = String(text ?? "");
  if (node && node.textContent !== text) node.textContent = text;
}

const num = (v, fallback = 0) => (Number.isFinite(Number(v)) && v !== null && v !== "" ? Number(v) : fallback);
const clamp01 = (v) => Math.min(1, Math.max(0, num(v)));
const trimNum = (v) => (Number.isInteger(v) ? String(v) : String(+v.toFixed(2)));

// A state word -> a colour family. Unknown words stay neutral rather than guessing.
function tone(word) {
  const s = String(word ?? "").toLowerCase();
  if (["ok", "ready", "running", "open", "idle", "locked"].includes(s)) return "good";
  if (["loading", "starting", "restarting", "warming", "connecting", "busy", "queued"].includes(s)) return "warn";
  if (["failed", "failing", "unavailable", "unreachable", "error", "dead", "crashed", "closed"].includes(s)) return "bad";
  if (["off", "none", "disabled", ""].includes(s)) return "off";
  return "neutral";
}

// A stable hue per instrument, so a kick is the same colour on its pad and in the clip list.
const HUES = { kick: 12, snare: 205, hat: 48, hihat: 48, clap: 315, tom: 160, perc: 270, continuation: 190, music: 95 };
function hue(name) {
  const key = String(name ?? "").toLowerCase();
  if (key in HUES) return HUES[key];
  let h = 0;
  for (const ch of key) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return h;
}

// Keep a container's children keyed by data-<key>, in the given order, creating only what is new:
// elements survive status ticks (no flicker, no lost focus or running animation).
function syncChildren(container, keys, dataKey, create) {
  const existing = new Map([...container.children].map((c) => [c.dataset[dataKey], c]));
  keys.forEach((key, i) => {
    const child = existing.get(key) ?? create(key);
    existing.delete(key);
    if (container.children[i] !== child) container.insertBefore(child, container.children[i] ?? null);
  });
  for (const stale of existing.values()) stale.remove();
}

// ------------------------------------------------------------------ log / toasts

// Errors and notable events: a short stack that fades, so a mistake is seen but never piles up.
function log(text, level = "info") {
  const box = $("#log");
  const time = new Date().toLocaleTimeString([], { hour12: false });
  const item = el("li", { class: `entry ${level}`, role: level === "error" ? "alert" : null,
    onclick: () => item.remove() }, el("time", { text: time }), el("span", { text }));
  box.append(item);
  while (box.children.length > 5) box.firstElementChild.remove();
  setTimeout(() => item.classList.add("fade"), level === "error" ? 9000 : 4000);
  setTimeout(() => item.remove(), level === "error" ? 9700 : 4700);
}

// ------------------------------------------------------------------ connection

function setConnection(st, text) {
  const node = $("#connection");
  node.dataset.state = st;
  setText(node, text);
  document.body.classList.toggle("offline", st !== "open");
}

function connect() {
  setConnection("connecting", "connecting…");
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  conn.ws = ws;
  ws.onopen = () => {
    if (conn.retry > 0) log("reconnected");
    conn.retry = 0;
    setConnection("open", "live");
  };
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return log("unreadable message from the daemon", "error"); }
    try { handle(msg); } catch (err) { log("page error: " + err.message, "error"); }
  };
  ws.onclose = () => {
    if (conn.ws !== ws) return;
    conn.ws = null;
    const delay = Math.min(5, 2 ** conn.retry);  // 1, 2, 4, 5, 5 ... seconds
    if (conn.retry++ === 0) log("connection lost", "error");
    setConnection("closed", `offline · retry in ${delay} s`);
    setTimeout(connect, delay * 1000);
  };
}

// One request by endpoint name with named args (left out = the endpoint's default); returns its id.
function send(request, args = {}) {
  if (!conn.ws || conn.ws.readyState !== WebSocket.OPEN) {
    log(`not connected: ${request} not sent`, "error");
    return null;
  }
  const id = conn.nextId++;
  conn.ws.send(JSON.stringify({ request, args, id }));
  return id;
}

function handle(msg) {
  switch (msg?.type) {
    case "hello": return onHello(msg);
    case "status": return onStatus(msg.status ?? {});
    case "clip": return msg.clip && addClip(msg.clip);
    case "clip_removed": return removeClip(msg.name);
    case "reply": return onReply(msg);
    default: return undefined;  // newer server, older page: ignore what we do not know
  }
}

// ------------------------------------------------------------------ hello and status

function onHello(msg) {
  setText($("#version"), msg.version ? "v" + msg.version : "");
  setText($("#session"), msg.session ?? "");
  state.endpoints = new Map((msg.endpoints ?? []).map((e) => [e.name, e]));
  fillGrids(msg.grids ?? []);
  buildForms();
  resetJobs();
  resetClips(msg.clips ?? [], num(msg.clips_total, 0));
  // Without drum.generate there is nothing for the "+" to ask; an empty list means "not told".
  document.body.classList.toggle("no-generate", state.endpoints.size > 0 && !state.endpoints.has("drum.generate"));
}

// The quantize grids come from the daemon; keep the musician's choice across reconnects.
function fillGrids(grids) {
  const select = $("#quantize");
  const keep = select.value;
  select.replaceChildren(el("option", { value: "", text: "instrument default" }),
    ...grids.map((g) => el("option", { value: g, text: g })));
  select.value = grids.includes(keep) ? keep : "";
}

function onStatus(s) {
  state.status = s;
  if (s.version && !$("#version").textContent) setText($("#version"), "v" + s.version);
  renderTempo(s.tempo);
  renderHealth(s);
  renderPads(s.instruments ?? {}, s.models ?? {});
  syncJobsFromStatus(s);
  // both need the continuation's MusicGen: without [continuation] model they would only get errors
  for (const kind of ["continuation", "music"]) {
    const panel = $(`#forms [data-form="${kind}"]`);
    if (panel) panel.hidden = !s.continuation;
  }
}

// Tempo from status.tempo or a tempo/reply: BPM, beat in the bar (phase is 0..quantum), source, peers.
function renderTempo(t) {
  const box = $("#tempo");
  if (!t) {  // no tempo source reported: blank rather than a stale tempo
    box.dataset.state = "off";
    for (const [sel, text] of [[".bpm", "–"], [".beat", "– / –"], [".source", ""], [".peers", ""]]) setText($(sel, box), text);
    return;
  }
  const bpm = Number(t.bpm), q = num(t.quantum, 4) || 4, phase = Number(t.phase);
  setText($(".bpm", box), Number.isFinite(bpm) && t.bpm !== null ? bpm.toFixed(1) : "–");
  setText($(".beat", box), Number.isFinite(phase) && t.phase !== null
    ? `${Math.floor(phase % q) + 1} / ${trimNum(q)}` : `– / ${trimNum(q)}`);
  setText($(".source", box), t.source ?? "");
  const peers = num(t.peers, 0);
  setText($(".peers", box), t.source === "link" || peers ? `${peers} peer${peers === 1 ? "" : "s"}` : "");
  box.dataset.state = t.source ?? "on";
  box.classList.toggle("playing", !!num(t.playing, 0));
}

// ------------------------------------------------------------------ health

function renderHealth(s) {
  const models = s.models ?? {};
  const box = $("#models");
  syncChildren(box, Object.keys(models), "model", (name) => el("div", { class: "model", "data-model": name },
    el("div", { class: "row" }, el("span", { class: "name", text: name }), el("span", { class: "badge" })),
    el("div", { class: "facts" }), el("div", { class: "error" })));
  for (const card of box.children) {
    const m = models[card.dataset.model] ?? {};
    card.dataset.state = m.state ?? "";
    card.dataset.tone = tone(m.state);
    setText($(".badge", card), (m.state ?? "unknown") + (m.busy ? " · busy" : ""));
    setText($(".facts", card), modelFacts(m));
    setText($(".error", card), m.error ?? "");
  }
  const audio = s.audio, midi = s.midi, out = s.output, cont = s.continuation;
  const rows = [
    ["audio", audio?.state, audio?.reason ?? [audio?.device, audio?.xruns != null ? `${audio.xruns} xruns` : null]],
    ["midi", midi?.state, midi?.reason ?? ((midi?.inputs ?? []).join(", ") || null)],
    ["output", out?.state, out?.error ?? out?.dir],
  ];
  if (cont) rows.push(["continuation", cont.state, cont.error ?? (cont.running != null ? `job ${cont.running} running` : null)]);
  const sub = $("#subsystems");
  syncChildren(sub, rows.map((r) => r[0]), "subsystem", (name) => el("div", { class: "subsystem", "data-subsystem": name },
    el("span", { class: "name", text: name }), el("span", { class: "badge" }), el("span", { class: "detail" })));
  rows.forEach(([name, st, detail]) => {
    const row = sub.querySelector(`[data-subsystem="${name}"]`);
    row.dataset.state = st ?? "";
    row.dataset.tone = tone(st);
    setText($(".badge", row), st ?? "unknown");
    const text = Array.isArray(detail) ? detail.filter((d) => d != null && d !== "").join(" · ") : detail;
    setText($(".detail", row), text ?? "");
    row.title = text ?? "";
  });
}

// One line per model: what a musician checks before a set (device, precision, memory, restarts).
function modelFacts(m) {
  const mem = m.memory ?? {};
  const mb = mem.allocated_mb ?? mem.rss_mb;
  const memText = mb == null ? null
    : mem.reserved_mb != null ? `${Math.round(mb)} / ${Math.round(mem.reserved_mb)} MB` : `${Math.round(mb)} MB`;
  const device = [m.device, m.device_name ? `(${m.device_name})` : null].filter(Boolean).join(" ");
  const restarts = m.restarts != null ? `${m.restarts} restart${m.restarts === 1 ? "" : "s"}` : null;
  return [m.family, device || null, m.info?.precision, memText, restarts, m.made != null ? `${m.made} made` : null]
    .filter((x) => x != null && x !== "").join(" · ");
}

// ------------------------------------------------------------------ pads

function renderPads(instruments, models) {
  const names = Object.keys(instruments);
  const pads = $("#pads");
  syncChildren(pads, names, "instrument", makePad);
  [...pads.children].forEach((cell, i) => updatePad(cell, instruments[cell.dataset.instrument] ?? {}, models, i));
  $("#pads-empty").hidden = names.length > 0;
}

function makePad(name) {
  const cell = el("div", { class: "pad-cell", "data-instrument": name, style: `--hue:${hue(name)}` });
  const pad = el("button", { class: "pad", type: "button", "data-instrument": name },
    el("span", { class: "key" }),
    el("span", { class: "name", text: name }),
    el("span", { class: "gen-dot", title: "generating" }),
    el("span", { class: "level", "data-ready": "0", "data-target": "0" },
      el("span", { class: "bar" }, el("span", { class: "fill" })), el("span", { class: "count", text: "0/0" })));
  // pointerdown, not click: a drum must sound when the finger lands, not when it lifts.
  pad.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    e.preventDefault();
    playPad(name);
  });
  pad.addEventListener("click", (e) => { if (e.detail === 0) playPad(name); });  // Enter/Space, el.click()
  const gen = el("button", { class: "generate", type: "button", "data-instrument": name,
    "aria-label": `make more ${name} clips`, onclick: () => generate(name) }, "+");
  cell.append(pad, gen);
  return cell;
}

function updatePad(cell, info, models, index) {
  const pad = $(".pad", cell), level = $(".level", cell);
  const ready = num(info.ready), target = num(info.target);
  level.dataset.ready = String(ready);
  level.dataset.target = String(target);
  $(".fill", level).style.width = `${target > 0 ? Math.min(100, (ready / target) * 100) : 0}%`;
  setText($(".count", level), `${ready}/${target}`);
  setText($(".key", pad), index < 9 ? String(index + 1) : "");
  const model = models[info.model];
  cell.classList.toggle("generating", num(info.generating) > 0);
  cell.classList.toggle("dry", target > 0 && ready === 0);
  cell.dataset.modelState = model?.state ?? "";
  cell.dataset.tone = model ? tone(model.state) : "neutral";
  pad.title = [`${cell.dataset.instrument}${info.model ? " · model " + info.model : ""}`,
    `pool ${ready}/${target}, generating ${num(info.generating)}`,
    bandsText(info.bands),
    info.error ?? null,
    `served fresh ${num(info.served_fresh)}, replayed ${num(info.served_replay)}, waited ${num(info.served_waited)}`,
    num(info.waiting_plays) ? `${info.waiting_plays} plays waiting` : null].filter(Boolean).join("\n");
  $(".generate", cell).title = `make ${generateCount()} more ${cell.dataset.instrument} clips`;
}

// A pool split into velocity bands (a model conditioned on velocity): each band's level.
function bandsText(bands) {
  if (!Array.isArray(bands) || bands.length < 2) return null;
  return "velocity " + bands.map((b) => `${b.velocity}: ${num(b.ready)}/${num(b.target)}`).join(", ");
}

// Restart the flash animation even on a fast roll of hits.
function flash(node, cls) {
  node.classList.remove(cls);
  void node.offsetWidth;
  node.classList.add(cls);
}

function playPad(name) {
  const args = { instrument: name, velocity: Math.round(num($("#velocity").value, 100)) };
  const q = $("#quantize").value;
  if (q) args.quantize = q;
  const cell = $(`#pads .pad-cell[data-instrument="${CSS.escape(name)}"]`);
  if (cell) flash(cell, "hit");
  send("drum.play", args);
}

const generateCount = () => Math.max(1, Math.round(num($("#generate-count").value, 4)));

function generate(name) {
  if (send("drum.generate", { instrument: name, count: generateCount() })) log(`${name}: making ${generateCount()} more`);
}

// Keys 1-9 play pads 1-9, except while typing in a form (a seed, a description, the velocity).
document.addEventListener("keydown", (e) => {
  if (e.repeat || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.target.closest?.("input, select, textarea, [contenteditable]")) return;
  if (!/^[1-9]$/.test(e.key)) return;
  const cell = $("#pads").children[Number(e.key) - 1];
  if (cell) { e.preventDefault(); playPad(cell.dataset.instrument); }
});

// ------------------------------------------------------------------ jobs

const jobs = new Map();      // job id (string) -> { el, fraction, delivered, ... }
const finished = new Map();  // job id -> when it ended: a late status tick must not bring it back
const requestJobs = new Map(); // request id -> job id, to count drum/ready replies

function resetJobs() {
  for (const job of jobs.values()) job.el.remove();
  jobs.clear();
  renderJobsEmpty();
}

const renderJobsEmpty = () => { $("#jobs-empty").hidden = jobs.size > 0; };

function createJob(key) {
  const node = el("li", { class: "job", "data-job-id": key },
    el("span", { class: "label" }), el("span", { class: "detail" }),
    el("progress", { max: "1", value: "0" }),
    el("button", { class: "cancel", type: "button", "aria-label": `cancel job ${key}`, onclick: (e) => {
      e.currentTarget.disabled = true;
      send("job.cancel", { job_id: Number(key) });
    } }, "Cancel"));
  $("#jobs").append(node);
  const job = { key, el: node, fraction: 0, delivered: 0, total: 0, kind: "", instrument: "", queued: null,
    inStatus: false, missed: 0, touched: Date.now() };
  jobs.set(key, job);
  renderJobsEmpty();
  return job;
}

// Merge what one source knows about a job. Fraction and delivered only move forward: status ticks
// and replies arrive interleaved, and a bar going backwards reads as a fault.
function upsertJob(id, patch) {
  if (id == null) return null;
  const key = String(id);
  if (finished.has(key)) return null;
  const job = jobs.get(key) ?? createJob(key);
  for (const [k, v] of Object.entries(patch)) {
    if (v === undefined) continue;
    if (k === "fraction") job.fraction = Math.max(job.fraction, clamp01(v));
    else if (k === "delivered") job.delivered = Math.max(job.delivered, num(v));
    else job[k] = v;
  }
  if (job.total > 0) job.fraction = Math.max(job.fraction, clamp01(job.delivered / job.total));
  job.touched = Date.now();
  const who = job.kind === "continuation" || !job.instrument ? (job.kind || "job") : job.instrument;
  setText($(".label", job.el), `${who} #${key}`);
  const detail = job.queued ? `queued #${job.queued}`
    : job.total > 0 ? `${job.delivered}/${job.total}` : `${Math.round(job.fraction * 100)}%`;
  setText($(".detail", job.el), detail);
  $("progress", job.el).value = job.fraction;
  job.el.style.setProperty("--hue", hue(job.kind === "continuation" ? "continuation" : job.instrument));
  job.el.classList.toggle("queued", !!job.queued);
  return job;
}

// End a job: show the outcome briefly, then remove it; remember it so it cannot come back.
function finishJob(id, how) {
  const key = String(id);
  if (finished.has(key)) return;
  finished.set(key, Date.now());
  const job = jobs.get(key);
  if (!job) return;
  if (how === "done") $("progress", job.el).value = job.fraction = 1;
  job.el.classList.add(how);
  $(".cancel", job.el).disabled = true;
  setText($(".detail", job.el), how);
  setTimeout(() => { job.el.remove(); jobs.delete(key); renderJobsEmpty(); }, 1500);
}

function syncJobsFromStatus(s) {
  const seen = new Set();
  const mark = (id, patch) => { if (id == null) return; seen.add(String(id)); upsertJob(id, { ...patch, inStatus: true }); };
  for (const j of s.jobs?.list ?? []) {
    mark(j.id, { kind: j.kind ?? "generate", instrument: j.instrument ?? "", total: num(j.total), delivered: num(j.delivered), queued: null });
  }
  const c = s.continuation;
  if (c?.running != null) mark(c.running, { kind: "continuation", fraction: num(c.progress), queued: null });
  (c?.queued ?? []).forEach((id, i) => mark(id, { kind: "continuation", queued: i + 1 }));
  const now = Date.now();
  for (const job of [...jobs.values()]) {
    if (seen.has(job.key)) { job.missed = 0; continue; }
    // Gone from the status: it ended (two ticks, so a reply racing a tick is not taken for an end).
    if (job.inStatus ? ++job.missed >= 2 : now - job.touched > 10000) finishJob(job.key, "done");
  }
  for (const [key, when] of finished) if (now - when > 60000) finished.delete(key);
}

// ------------------------------------------------------------------ replies

function onReply(m) {
  const n = m.named ?? {};
  switch (m.reply) {
    case "drum/played":
      if (n.fresh === 0) log(`${n.instrument}: pool empty, replayed the last clip`, "warn");
      break;
    case "job/started":
      requestJobs.set(n.id, n.job_id);
      upsertJob(n.job_id, { kind: "generate", instrument: n.instrument, total: num(n.count), queued: null });
      break;
    case "drum/ready": {
      // Counted apart from the status's delivered (max of both), so a reply and a tick
      // reporting the same clip do not count it twice.
      const job = jobs.get(String(requestJobs.get(n.id)));
      if (job) { job.ready = (job.ready ?? 0) + 1; upsertJob(job.key, { delivered: job.ready }); }
      break;
    }
    case "job/queued":
      requestJobs.set(n.id, n.job_id);
      upsertJob(n.job_id, { kind: "continuation", queued: num(n.position) > 0 ? num(n.position) : null });
      break;
    case "job/progress":
      upsertJob(n.job_id, { kind: jobs.get(String(n.job_id))?.kind || "continuation", fraction: n.fraction, queued: null });
      break;
    case "job/chunk":
      upsertJob(n.job_id, {});
      break;
    case "job/done":
      finishJob(n.job_id, "done");
      log(`job ${n.job_id} done${n.delivered != null ? ` (${n.delivered} delivered)` : ""}`);
      break;
    case "job/cancelled":
      finishJob(n.job_id, "cancelled");
      log(`job ${n.job_id} cancelled`);
      break;
    case "tempo/reply":
      renderTempo(n);
      break;
    case "pong":
      log(`pong ${n.version ?? ""}`);
      break;
    case "error": {
      const message = String(n.message ?? m.args?.[2] ?? "error");
      const where = String(n.address ?? "").replace(/^\/genbridge\//, "");
      log(where ? `${where}: ${message}` : message, "error");
      const jobMatch = /^job (\d+)\b/.exec(message);
      if (jobMatch) finishJob(jobMatch[1], "failed");
      break;
    }
    default:
      break;  // capture/saved, kit/selected ...: the status shows their effect
  }
}

// ------------------------------------------------------------------ forms built from endpoints

function buildForms() {
  const box = $("#forms");
  box.replaceChildren();
  const modes = [["seconds", state.endpoints.get("continue")], ["bars", state.endpoints.get("continue.bars")]]
    .filter(([, e]) => e);
  if (modes.length) {
    const panel = makeFormPanel("continuation", "Continue", modes, "Continue");
    panel.hidden = !state.status?.continuation;
    box.append(panel);
  }
  const music = state.endpoints.get("music.generate");
  if (music) {
    const panel = makeFormPanel("music", "Text to music", [["", music]], "Generate");
    panel.hidden = !state.status?.continuation;
    box.append(panel);
  }
}

// A panel with one form per mode (a toggle when there are two); values carry over between modes.
function makeFormPanel(kind, title, modes, submitText) {
  const panel = el("section", { class: "panel form-panel", "data-form": kind }, el("h2", { text: title }));
  const forms = modes.map(([mode, endpoint]) => makeEndpointForm(endpoint, mode, submitText));
  if (modes.length > 1) {
    const toggle = el("div", { class: "toggle", role: "group", "aria-label": "length in" });
    const choose = (i) => {
      const from = forms.find((f) => !f.hidden);
      forms.forEach((f, j) => { f.hidden = j !== i; });
      toggle.querySelectorAll("button").forEach((b, j) => b.setAttribute("aria-pressed", String(j === i)));
      if (from && from !== forms[i]) copyValues(from, forms[i]);
    };
    modes.forEach(([mode], i) => toggle.append(el("button", { type: "button", class: "mode", "data-mode": mode,
      onclick: () => choose(i) }, mode)));
    panel.append(toggle);
    forms.forEach((f) => panel.append(f));
    choose(0);
  } else {
    panel.append(forms[0]);
  }
  return panel;
}

function copyValues(from, to) {
  for (const input of from.elements) {
    const other = input.name && to.elements.namedItem(input.name);
    if (!other || other.type !== input.type) continue;
    if (input.type === "checkbox") other.checked = input.checked; else other.value = input.value;
  }
}

function makeEndpointForm(endpoint, mode, submitText) {
  const form = el("form", { class: "endpoint-form", "data-endpoint": endpoint.name, "data-mode": mode || null,
    title: endpoint.doc ?? "" });
  for (const arg of endpoint.args ?? []) form.append(makeField(endpoint.name, arg));
  form.append(el("div", { class: "actions" }, el("button", { type: "submit", class: "submit" }, submitText)));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (send(endpoint.name, formArgs(form))) log(`${endpoint.name} sent`);
  });
  return form;
}

// One input per argument, chosen by its kind: a select for choices, a checkbox for a 0/1 int,
// numbers with their bounds, text otherwise (with the quoted values of its doc as suggestions).
function makeField(endpointName, arg) {
  const id = `f-${endpointName}-${arg.name}`.replace(/[^\w-]/g, "_");
  const choices = arg.choices ?? [];
  const numeric = ["int", "float", "velocity"].includes(arg.kind);
  let input, extra = null;
  if (choices.length) {
    input = el("select", {}, ...choices.map((c) => el("option", { value: c, text: c === "" ? "default" : c })));
    input.value = arg.default != null ? String(arg.default) : choices[0];
  } else if (arg.kind === "int" && arg.minimum === 0 && arg.maximum === 1) {
    input = el("input", { type: "checkbox" });
    input.checked = !!arg.default;
  } else if (numeric) {
    input = el("input", { type: "number", inputmode: "decimal", min: arg.kind === "velocity" ? 0 : arg.minimum,
      max: arg.kind === "velocity" ? 127 : arg.maximum, step: arg.kind === "float" ? "any" : "1",
      placeholder: arg.required ? "" : "default" });
    if (arg.default != null) input.value = String(arg.default);
  } else {
    // 'quoted' words of the doc, not apostrophes ("the model's"): a source's 'last', 'capture'.
    const hints = [...String(arg.doc ?? "").matchAll(/(?<!\w)'([^'\s][^']*?)'(?!\w)/g)].map((x) => x[1]);
    input = el("input", { type: "text", autocomplete: "off", spellcheck: "false",
      placeholder: hints.length ? hints.join(", ") : arg.required ? "" : "optional" });
    if (hints.length) {
      extra = el("datalist", { id: id + "-list" }, ...hints.map((h) => el("option", { value: h })));
      input.setAttribute("list", id + "-list");
    }
    if (arg.default) input.value = String(arg.default);
  }
  input.id = id;
  input.name = arg.name;
  input.dataset.kind = arg.kind;
  if (arg.required && input.type !== "checkbox") input.required = true;
  const wide = arg.kind === "str" && !choices.length;
  return el("label", { class: `field${wide ? " wide" : ""}${input.type === "checkbox" ? " check" : ""}`,
    for: id, title: arg.doc ?? "" }, el("span", { class: "field-name", text: arg.name }),
  input, extra);
}

// What the form sends: empty fields are left out, so the daemon's default applies.
function formArgs(form) {
  const args = {};
  for (const input of form.elements) {
    if (!input.name) continue;
    if (input.type === "checkbox") { args[input.name] = input.checked ? 1 : 0; continue; }
    if (input.value === "") continue;
    const kind = input.dataset.kind;
    args[input.name] = kind === "int" ? Math.round(Number(input.value))
      : kind === "float" || kind === "velocity" ? Number(input.value) : input.value;
  }
  return args;
}

// ------------------------------------------------------------------ clips

const clipNames = new Set();   // every clip of the session we know of (the DOM holds the newest 500)

function resetClips(list, total) {
  const ul = $("#clips");
  waves.queue.length = 0;
  waves.observer.disconnect();
  clipNames.clear();
  for (const c of list) clipNames.add(c.name);
  state.clipsTotal = total;
  const frag = document.createDocumentFragment();
  for (const c of list.slice(-MAX_CLIPS).reverse()) frag.append(makeClip(c));
  ul.replaceChildren(frag);
  for (const canvas of ul.querySelectorAll("canvas.wave")) waves.observer.observe(canvas);
  updateClipNotes();
}

function addClip(clip) {
  const ul = $("#clips");
  if (clipNames.has(clip.name)) return;
  clipNames.add(clip.name);
  state.clipsTotal += 1;
  const li = makeClip(clip);
  ul.prepend(li);
  waves.observer.observe($("canvas.wave", li));
  flash(li, "landed");
  const pad = $(`#pads .pad-cell[data-instrument="${CSS.escape(li.dataset.instrument)}"]`);
  if (pad) flash(pad, "landed");
  while (ul.children.length > MAX_CLIPS) {
    const last = ul.lastElementChild;
    waves.observer.unobserve($("canvas.wave", last));
    last.remove();
  }
  updateClipNotes();
}

function removeClip(name) {
  if (clipNames.delete(name)) state.clipsTotal = Math.max(0, state.clipsTotal - 1);
  const li = $(`#clips li.clip[data-name="${CSS.escape(String(name))}"]`);
  if (li) { waves.observer.unobserve($("canvas.wave", li)); li.remove(); }
  updateClipNotes();
}

function updateClipNotes() {
  const shown = $("#clips").children.length;
  const total = Math.max(state.clipsTotal, clipNames.size, shown);
  const older = total - shown;
  setText($("#clip-count"), total ? String(total) : "");
  $("#clips-empty").hidden = shown > 0;
  const note = $("#clips-older");
  note.hidden = older <= 0;
  setText(note, `${older} older clip${older === 1 ? " is" : "s are"} in the session folder's index.html`);
}

// "21:27:52": when the clip landed in the session folder, from its name (20261201-212752.138-...,
// stamped when it was played or written); the sidecar's "created" is when the model made it,
// which for a pooled clip can be long before the hit that played it.
function clipTime(clip) {
  const m = /^\d{8}-(\d\d)(\d\d)(\d\d)/.exec(clip.name ?? "");
  if (m) return `${m[1]}:${m[2]}:${m[3]}`;
  const created = Number(clip.meta?.created);
  return Number.isFinite(created) && created > 0 ? new Date(created * 1000).toLocaleTimeString([], { hour12: false }) : "";
}

function clipDuration(meta) {
  let d = Number(meta.duration_s);
  if (!Number.isFinite(d) && meta.frames && meta.sample_rate) d = meta.frames / meta.sample_rate;
  return Number.isFinite(d) ? `${d.toFixed(d < 10 ? 2 : 1)} s` : "";
}

function makeClip(clip) {
  const meta = clip.meta ?? {};
  const name = String(clip.name ?? "");
  const inst = clip.instrument ?? meta.instrument ?? (meta.kind || name.split("-").pop().replace(/\.wav$/, "") || "clip");
  const url = clip.url ?? "clips/" + encodeURIComponent(name);
  const absolute = new URL(url, location.href).href;
  const li = el("li", { class: "clip", "data-name": name, "data-instrument": inst, draggable: "true",
    title: JSON.stringify(meta, null, 1), style: `--hue:${hue(inst)}` });
  const audio = el("audio", { class: "player", controls: true, preload: "none", src: url });
  const canvas = el("canvas", { class: "wave", "data-url": url, "aria-label": "waveform: click to play" });
  const head = el("div", { class: "clip-head" },
    el("span", { class: "tag", text: inst }),
    el("span", { class: "time", text: clipTime(clip) }),
    el("span", { class: "dur", text: clipDuration(meta) }),
    meta.kind && meta.kind !== inst && meta.kind !== "drum" ? el("span", { class: "kind", text: meta.kind }) : null,
    meta.seed != null ? el("span", { class: "seed", text: `seed ${meta.seed}` }) : null,
    el("a", { class: "download", href: url, download: name, title: `download ${name}`, draggable: "false" }, "⤓"));
  li.append(head, el("div", { class: "clip-body" }, el("div", { class: "wave-box" }, canvas), audio));
  // Chromium's file drag-out: dropping on a DAW or the desktop downloads the WAV there.
  li.addEventListener("dragstart", (e) => {
    e.dataTransfer.effectAllowed = "copy";
    e.dataTransfer.setData("DownloadURL", `audio/wav:${name}:${absolute}`);
    e.dataTransfer.setData("text/uri-list", absolute);
    e.dataTransfer.setData("text/plain", absolute);
  });
  // A draggable parent steals the drag of the player's seek bar: suspend it while using the player.
  audio.addEventListener("pointerdown", () => {
    li.draggable = false;
    document.addEventListener("pointerup", () => { li.draggable = true; }, { once: true });
  });
  canvas.addEventListener("click", () => {
    audio.currentTime = 0;
    audio.play().catch(() => log("cannot play this clip", "error"));
  });
  return li;
}

// One clip at a time: auditioning on stage, two overlapping clips only confuse.
document.addEventListener("play", (e) => {
  for (const other of document.querySelectorAll("audio.player")) if (other !== e.target) other.pause();
}, true);

// ------------------------------------------------------------------ waveforms (lazy)

const waves = {
  queue: [],
  active: 0,
  decoder: null,
  observer: new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (!e.isIntersecting) continue;
      waves.observer.unobserve(e.target);
      waves.queue.push(e.target);
    }
    pumpWaves();
  }, { rootMargin: "300px 0px" }),
};

function pumpWaves() {
  while (waves.active < WAVE_FETCHES && waves.queue.length) {
    const canvas = waves.queue.shift();
    if (!canvas.isConnected) continue;
    waves.active += 1;
    loadWave(canvas).finally(() => { waves.active -= 1; pumpWaves(); });
  }
}

async function loadWave(canvas) {
  try {
    const res = await fetch(canvas.dataset.url);
    if (!res.ok) throw new Error(res.statusText);
    waves.decoder ??= new OfflineAudioContext(1, 1, 44100);
    drawWave(canvas, await waves.decoder.decodeAudioData(await res.arrayBuffer()));
  } catch {
    canvas.dataset.wave = "failed";  // an unreadable clip simply has no picture
  }
}

// min/max of the first channel per pixel column, at the device's pixel density.
function drawWave(canvas, buffer) {
  const dpr = window.devicePixelRatio || 1;
  const w = (canvas.width = Math.max(1, Math.round(canvas.clientWidth * dpr)));
  const h = (canvas.height = Math.max(1, Math.round(canvas.clientHeight * dpr)));
  const data = buffer.getChannelData(0), n = data.length, mid = h / 2;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = `hsl(${canvas.closest(".clip")?.style.getPropertyValue("--hue") || 190} 80% 66%)`;
  for (let x = 0; x < w; x++) {
    let lo = 0, hi = 0;
    const end = Math.min(n, Math.floor(((x + 1) * n) / w));
    for (let i = Math.floor((x * n) / w); i < end; i++) { const v = data[i]; if (v < lo) lo = v; else if (v > hi) hi = v; }
    ctx.fillRect(x, mid - hi * mid, 1, Math.max(dpr, (hi - lo) * mid));
  }
  canvas.dataset.wave = "drawn";
}

// ------------------------------------------------------------------ start

$("#velocity").addEventListener("input", (e) => setText($("#velocity-value"), e.target.value));
connect();
