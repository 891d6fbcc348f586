// The control-centre console: plain JS, no build step, no network beyond this API.
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  token: sessionStorage.getItem("sl.token"),
  me: null,
  lang: localStorage.getItem("sl.lang") || "ko",
  alerts: new Map(), // id -> summary (newest event wins)
  selected: null,
  lastEventId: 0,
  ws: null,
  wsAttempt: 0,
  audio: null,
  sound: true,
  proj: null,
  view: null,
  lampTimer: null,
};

const T = {
  ko: { open: "미확인", acknowledged: "확인됨", dispatched: "출동", resolved: "종료", cancelled: "취소", connected: "연결됨", disconnected: "연결 끊김", sos: "SOS", lamp_fault: "등 고장", device_offline: "기기 끊김", mass_outage: "대규모 정전", tamper: "훼손" },
  en: { open: "OPEN", acknowledged: "acknowledged", dispatched: "dispatched", resolved: "resolved", cancelled: "cancelled", connected: "connected", disconnected: "disconnected", sos: "SOS", lamp_fault: "lamp fault", device_offline: "device offline", mass_outage: "mass outage", tamper: "tamper" },
};
const t = (k) => (T[S.lang] && T[S.lang][k]) || k;

function applyLang() {
  document.documentElement.lang = S.lang;
  document.querySelectorAll("[data-ko]").forEach((el) => { el.textContent = el.dataset[S.lang]; });
  $("lang").textContent = S.lang === "ko" ? "EN" : "한국어";
  setConn(S.ws && S.ws.readyState === 1);
  renderList();
  renderDetail();
}

async function api(path, opts = {}) {
  const headers = { "Content-Type": "application/json", ...(opts.headers || {}) };
  if (S.token) headers.Authorization = "Bearer " + S.token;
  const r = await fetch(path, { ...opts, headers });
  if (r.status === 401 && path !== "/v1/auth/login") { logout(); throw new Error("session expired"); }
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error((body && body.detail) || r.statusText);
  return body;
}

// ---------------------------------------------------------------- sound
function beep() {
  if (!S.sound) return;
  try {
    S.audio = S.audio || new AudioContext();
    const ctx = S.audio;
    [0, 0.35, 0.7].forEach((at) => {
      const o = ctx.createOscillator(), g = ctx.createGain();
      o.type = "square"; o.frequency.value = 880;
      g.gain.setValueAtTime(0.2, ctx.currentTime + at);
      g.gain.exponentialRampToValueAtTime(0.001, ctx.currentTime + at + 0.25);
      o.connect(g).connect(ctx.destination);
      o.start(ctx.currentTime + at); o.stop(ctx.currentTime + at + 0.3);
    });
  } catch (e) { /* no audio device: the banner still shows */ }
}

// ---------------------------------------------------------------- login
async function login(ev) {
  ev.preventDefault();
  $("login-error").textContent = "";
  try { S.audio = S.audio || new AudioContext(); } catch (e) { /* none */ }
  try {
    const r = await api("/v1/auth/login", { method: "POST", body: JSON.stringify({ username: $("login-user").value, password: $("login-pass").value }) });
    S.token = r.token;
    sessionStorage.setItem("sl.token", r.token);
    await start();
  } catch (e) { $("login-error").textContent = e.message; }
}

function logout() {
  S.token = null; sessionStorage.removeItem("sl.token");
  if (S.ws) { S.ws.onclose = null; S.ws.close(); S.ws = null; }
  clearInterval(S.lampTimer);
  $("console-view").hidden = true; $("login-view").hidden = false;
}

async function start() {
  S.me = await api("/v1/me");
  $("login-view").hidden = true; $("console-view").hidden = false;
  const names = Object.values(S.me.district_names || {}).map((n) => (S.lang === "ko" ? n[0] : n[1])).join(", ");
  $("who").textContent = `${S.me.username} · ${S.me.role}${names ? " · " + names : ""}`;
  applyLang();
  await loadMap();
  connect();
  refreshLamps();
  S.lampTimer = setInterval(refreshLamps, 10000);
}

// ---------------------------------------------------------------- live stream
function setConn(up) {
  const el = $("conn");
  el.className = "conn " + (up ? "up" : "down");
  el.textContent = t(up ? "connected" : "disconnected");
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${scheme}//${location.host}/v1/stream?last_event_id=${S.lastEventId}`;
  const ws = new WebSocket(url, ["streetlight.v1", "bearer." + S.token]);
  S.ws = ws;
  ws.onopen = () => { S.wsAttempt = 0; setConn(true); };
  ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
  ws.onclose = (ev) => {
    setConn(false);
    if (!S.token) return;
    if (ev.code === 1008) { logout(); return; }
    // Capped exponential backoff with jitter, as every reconnect in this project.
    const delay = Math.random() * Math.min(10000, 500 * Math.pow(1.5, Math.min(10, S.wsAttempt++)));
    setTimeout(() => { if (S.token) connect(); }, delay);
  };
}

function onMessage(m) {
  if (m.type === "hello") { S.lastEventId = Math.max(S.lastEventId, m.event_id); return; }
  if (m.type === "lamp") { refreshLamps(); return; }
  if (m.type !== "alert") return;
  const a = m.alert;
  const old = S.alerts.get(a.id);
  if (old && old.event_id > a.event_id) return;
  S.alerts.set(a.id, a);
  S.lastEventId = Math.max(S.lastEventId, m.event_id);
  if (a.kind === "sos" && a.state === "open" && (!old || old.state !== "open")) beep();
  renderList();
  renderAlertsOnMap();
  if (S.selected === a.id) loadDetail(a.id);
}

// ---------------------------------------------------------------- list and detail
function fmtTime(iso) { return iso ? new Date(iso).toLocaleTimeString(S.lang === "ko" ? "ko-KR" : "en-GB") : ""; }

function renderList() {
  const ul = $("alert-list");
  if (!ul) return;
  const order = { open: 0, acknowledged: 1, dispatched: 2, resolved: 3, cancelled: 4 };
  const items = [...S.alerts.values()].sort((a, b) => (order[a.state] - order[b.state]) || (b.created_at > a.created_at ? 1 : -1));
  ul.replaceChildren(...items.map((a) => {
    const li = document.createElement("li");
    li.dataset.alertId = a.id; li.dataset.state = a.state; li.dataset.kind = a.kind;
    if (a.id === S.selected) li.classList.add("selected");
    li.innerHTML = `<span class="st"></span><span class="kind"></span> <span class="time"></span><div class="place"></div>`;
    li.querySelector(".st").textContent = t(a.state);
    li.querySelector(".kind").textContent = t(a.kind) + (a.count > 1 ? ` ×${a.count}` : "");
    li.querySelector(".time").textContent = fmtTime(a.created_at);
    li.querySelector(".place").textContent = S.lang === "ko" ? a.place_text_ko : a.place_text_en;
    li.onclick = () => select(a.id);
    return li;
  }));
  const open = items.filter((a) => a.kind === "sos" && a.state === "open");
  $("sos-banner").hidden = open.length === 0;
  $("sos-banner-place").textContent = open.length ? " · " + (S.lang === "ko" ? open[0].place_text_ko : open[0].place_text_en) : "";
}

function select(id) { S.selected = id; renderList(); loadDetail(id); }

let detail = null;
async function loadDetail(id) {
  try { detail = await api(`/v1/alerts/${encodeURIComponent(id)}`); } catch (e) { $("action-error").textContent = e.message; return; }
  renderDetail();
  renderTrack();
}

function renderDetail() {
  if (!detail || !$("detail")) return;
  const a = detail.alert;
  $("detail-empty").hidden = true; $("detail").hidden = false;
  $("detail").dataset.alertId = a.id; $("detail").dataset.state = detail.state;
  $("detail-title").textContent = `${t(a.kind)} · ${a.id}`;
  const st = $("detail-state"); st.className = "state " + detail.state; st.textContent = t(detail.state);
  $("detail-place-ko").textContent = a.place_text_ko; $("detail-place-en").textContent = a.place_text_en;
  const allowed = new Set(detail.allowed_actions);
  $("btn-ack").disabled = !allowed.has("acknowledge");
  $("btn-dispatch").disabled = !allowed.has("dispatch");
  $("btn-resolve").disabled = !allowed.has("resolve");
  $("btn-cancel").disabled = !allowed.has("cancel");
  $("timeline").replaceChildren(...a.timeline.map((e) => {
    const li = document.createElement("li");
    const extra = Object.entries(e.details || {}).map(([k, v]) => `${k}=${v}`).join(" ");
    li.textContent = `${fmtTime(e.at)} ${e.action} — ${e.actor}${e.note ? " · " + e.note : ""}${extra ? " · " + extra : ""}`;
    return li;
  }));
  $("track").replaceChildren(...detail.track.map((p) => {
    const li = document.createElement("li");
    li.textContent = `${fmtTime(p.ts)} ${p.lat.toFixed(5)}, ${p.lon.toFixed(5)}${p.accuracy_m != null ? ` ±${Math.round(p.accuracy_m)} m` : ""}`;
    return li;
  }));
}

async function act(action, body) {
  if (!S.selected) return;
  $("action-error").textContent = "";
  try {
    await api(`/v1/alerts/${encodeURIComponent(S.selected)}/${action}`, { method: "POST", body: JSON.stringify(body || {}) });
    await loadDetail(S.selected);
  } catch (e) { $("action-error").textContent = e.message; }
}

// ---------------------------------------------------------------- map
function project(lon, lat) {
  const p = S.proj;
  return [(lon - p.lon0) * p.k * p.cos, (p.lat1 - lat) * p.k];
}

function pathOf(geom) {
  const polys = geom.type === "Polygon" ? [geom.coordinates] : geom.coordinates;
  return polys.map((poly) => poly.map((ring) => "M" + ring.map(([x, y]) => project(x, y).map((v) => v.toFixed(1)).join(",")).join("L") + "Z").join("")).join("");
}

async function loadMap() {
  const all = await api("/v1/districts");
  const mine = S.me.districts;
  const shown = mine ? all.features.filter((f) => mine.includes(f.properties.code)) : all.features;
  let [a, b, c, d] = [180, 90, -180, -90];
  shown.forEach((f) => { const polys = f.geometry.type === "Polygon" ? [f.geometry.coordinates] : f.geometry.coordinates; polys.flat(2).forEach(([x, y]) => { a = Math.min(a, x); b = Math.min(b, y); c = Math.max(c, x); d = Math.max(d, y); }); });
  const cos = Math.cos(((b + d) / 2) * Math.PI / 180);
  const k = Math.min(1000 / ((c - a) * cos), 800 / (d - b));
  S.proj = { lon0: a, lat1: d, cos, k };
  S.view = [0, 0, (c - a) * cos * k, (d - b) * k];
  setView();
  const g = $("map-areas");
  g.replaceChildren();
  const feats = mine ? shown : all.features;
  feats.forEach((f) => {
    const p = document.createElementNS("http://www.w3.org/2000/svg", "path");
    p.setAttribute("d", pathOf(f.geometry));
    p.setAttribute("class", "area" + (!mine || mine.includes(f.properties.code) ? " mine" : ""));
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${f.properties.name} ${f.properties.name_eng}`;
    p.appendChild(title); g.appendChild(p);
  });
  if (mine && mine.length === 1) {
    const dongs = await api(`/v1/districts?level=dong&district=${mine[0]}`);
    dongs.features.forEach((f) => {
      const p = document.createElementNS("http://www.w3.org/2000/svg", "path");
      p.setAttribute("d", pathOf(f.geometry)); p.setAttribute("class", "dong"); g.appendChild(p);
    });
  }
}

function setView() { $("map").setAttribute("viewBox", S.view.map((v) => v.toFixed(1)).join(" ")); }

function circle(g, x, y, r, cls) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", "circle");
  el.setAttribute("cx", x.toFixed(1)); el.setAttribute("cy", y.toFixed(1)); el.setAttribute("r", r); el.setAttribute("class", cls);
  g.appendChild(el); return el;
}

function dotSize() { return Math.max(0.8, S.view[2] / 400); }

async function refreshLamps() {
  if (!S.proj || !S.token) return;
  try {
    const [lamps, walkers] = await Promise.all([api("/v1/lamps"), api("/v1/walkers")]);
    const g = $("map-lamps"); g.replaceChildren();
    lamps.features.forEach((f) => {
      if (!f.geometry) return;
      const [x, y] = project(...f.geometry.coordinates);
      const c = circle(g, x, y, dotSize(), "lamp " + f.properties.state);
      c.dataset.deviceId = f.id;
      c.onclick = () => showLamp(f.id);
    });
    const w = $("map-walkers"); w.replaceChildren();
    walkers.walkers.forEach((p) => { const [x, y] = project(p.lon, p.lat); circle(w, x, y, dotSize() * 1.2, "walker"); });
  } catch (e) { /* next refresh */ }
  renderAlertsOnMap();
}

function renderAlertsOnMap() {
  if (!S.proj) return;
  const g = $("map-alerts"); g.replaceChildren();
  [...S.alerts.values()].filter((a) => a.kind === "sos" && !["resolved", "cancelled"].includes(a.state) && a.place).forEach((a) => {
    const [x, y] = project(a.place.lon, a.place.lat);
    circle(g, x, y, dotSize() * 6, "sos-marker");
    const core = circle(g, x, y, dotSize() * 2, "sos-core");
    core.onclick = () => select(a.id);
  });
}

function renderTrack() {
  const g = $("map-track"); g.replaceChildren();
  if (!detail || !S.proj || detail.track.length < 2) return;
  const el = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  el.setAttribute("points", detail.track.map((p) => project(p.lon, p.lat).map((v) => v.toFixed(1)).join(",")).join(" "));
  el.setAttribute("class", "track-line"); g.appendChild(el);
}

async function showLamp(id) {
  const r = await api(`/v1/lamps/${encodeURIComponent(id)}`);
  $("lamp-panel").hidden = false;
  $("lamp-title").textContent = `${r.lamp.lamp_number || id}`;
  $("lamp-state").textContent = `${r.lamp.state} · ${r.lamp.level ?? "?"}% · ${r.lamp.faults.join(", ")}`;
  const svg = $("lamp-chart"); svg.replaceChildren();
  const n = Math.max(1, r.hours.length), bw = 480 / 24;
  const maxP = Math.max(1, ...r.hours.map((h) => h.power_avg_w || 0));
  let line = "";
  r.hours.forEach((h, i) => {
    const x = (24 - n + i) * bw, lv = (h.level_avg || 0) * 1.0;
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    rect.setAttribute("x", x + 1); rect.setAttribute("y", 110 - lv); rect.setAttribute("width", bw - 2); rect.setAttribute("height", lv);
    rect.setAttribute("fill", (h.uptime_s || 0) > 0 ? "#d9c46a" : "#555"); svg.appendChild(rect);
    line += `${i ? "L" : "M"}${x + bw / 2},${110 - ((h.power_avg_w || 0) / maxP) * 100}`;
  });
  if (line) { const p = document.createElementNS("http://www.w3.org/2000/svg", "path"); p.setAttribute("d", line); p.setAttribute("stroke", "#4aa3ff"); p.setAttribute("fill", "none"); svg.appendChild(p); }
}

// zoom (wheel) and pan (drag) by moving the viewBox
(function mapControls() {
  const svg = $("map");
  let drag = null;
  svg.addEventListener("wheel", (ev) => {
    if (!S.view) return;
    ev.preventDefault();
    const f = ev.deltaY > 0 ? 1.25 : 0.8, r = svg.getBoundingClientRect();
    const mx = S.view[0] + ((ev.clientX - r.left) / r.width) * S.view[2], my = S.view[1] + ((ev.clientY - r.top) / r.height) * S.view[3];
    S.view = [mx - (mx - S.view[0]) * f, my - (my - S.view[1]) * f, S.view[2] * f, S.view[3] * f];
    setView();
  }, { passive: false });
  svg.addEventListener("mousedown", (ev) => { drag = { x: ev.clientX, y: ev.clientY, v: S.view && [...S.view] }; });
  window.addEventListener("mouseup", () => { drag = null; });
  window.addEventListener("mousemove", (ev) => {
    if (!drag || !drag.v) return;
    const r = svg.getBoundingClientRect(), s = drag.v[2] / r.width;
    S.view = [drag.v[0] - (ev.clientX - drag.x) * s, drag.v[1] - (ev.clientY - drag.y) * s, drag.v[2], drag.v[3]];
    setView();
  });
})();

// ---------------------------------------------------------------- wiring
$("login-form").addEventListener("submit", login);
$("logout").onclick = logout;
$("lang").onclick = () => { S.lang = S.lang === "ko" ? "en" : "ko"; localStorage.setItem("sl.lang", S.lang); applyLang(); };
$("sound").onclick = () => { S.sound = !S.sound; $("sound").style.opacity = S.sound ? 1 : 0.5; if (S.sound) beep(); };
$("btn-ack").onclick = () => act("acknowledge");
$("btn-dispatch").onclick = () => act("dispatch", { unit: $("dispatch-unit").value, note: $("dispatch-note").value });
$("btn-resolve").onclick = () => act("resolve", { outcome: $("resolve-outcome").value });
$("btn-cancel").onclick = () => { if (confirm(S.lang === "ko" ? "오경보로 취소할까요?" : "Cancel as a false alarm?")) act("cancel"); };
document.addEventListener("keydown", (ev) => {
  if (ev.target instanceof HTMLInputElement || $("console-view").hidden) return;
  const key = ev.key.toLowerCase();
  if (key === "a") {
    // A acknowledges the selected alert, or the oldest open SOS when none is selected.
    if (!S.selected) { const open = [...S.alerts.values()].filter((a) => a.state === "open").sort((a, b) => (a.created_at > b.created_at ? 1 : -1)); if (open.length) { select(open[0].id); } }
    setTimeout(() => act("acknowledge"), 0);
  } else if (key === "d") act("dispatch", { unit: $("dispatch-unit").value, note: $("dispatch-note").value });
  else if (key === "r") act("resolve", { outcome: $("resolve-outcome").value });
});
applyLang();
if (S.token) start().catch(() => logout());
