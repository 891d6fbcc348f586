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
  sound: localStorage.getItem("sl.sound") !== "off",
  beepTimer: null,
  map: null, // the Leaflet map (map.js)
  mapReady: false,
  lampTimer: null,
  lamp: null, // the lamp panel's last answer
  lampInfo: new Map(), // device id -> GET /v1/lamps' properties (lamp number, neighbourhood, ...)
};

const T = {
  ko: {
    open: "미확인", acknowledged: "확인됨", dispatched: "출동", resolved: "종료", cancelled: "취소", connected: "연결됨", disconnected: "연결 끊김",
    sos: "SOS", lamp_fault: "등 고장", device_offline: "기기 끊김", mass_outage: "대규모 정전", tamper: "훼손", storage: "저장소 작업", data_loss: "메시지 유실",
    created: "접수", repeated: "반복", position: "위치", lamps_added: "추가 소등", escalated: "상향", lamps_confirmed: "점멸 확인", call_placed: "전화 걸음", call_answered: "통화됨", call_no_answer: "안 받음", guard_acknowledged: "지킴이 확인", guard_arrived: "지킴이 도착",
    online: "정상", brightened: "밝힘", blinking: "점멸", fault: "고장", offline: "끊김", sound_on: "소리 켜짐", sound_off: "소리 꺼짐", no_data: "자료 없음",
  },
  en: {
    open: "OPEN", acknowledged: "acknowledged", dispatched: "dispatched", resolved: "resolved", cancelled: "cancelled", connected: "connected", disconnected: "disconnected",
    sos: "SOS", lamp_fault: "lamp fault", device_offline: "device offline", mass_outage: "mass outage", tamper: "tamper", storage: "storage jobs", data_loss: "messages lost",
    created: "created", repeated: "pressed again", position: "position", lamps_added: "more lamps out", escalated: "escalated", lamps_confirmed: "lamps confirmed", call_placed: "call placed", call_answered: "answered", call_no_answer: "no answer", guard_acknowledged: "guard on the way", guard_arrived: "guard arrived",
    online: "online", brightened: "brightened", blinking: "blinking", fault: "fault", offline: "offline", sound_on: "Sound on", sound_off: "Sound off", no_data: "no data",
  },
};
// SOS alerts of 2+ residents from one source (address) within minutes: grouped and all flagged by
// the API (arrival order ranks none of them); listed below the unflagged ones, newest first.
T.ko.burst = "일괄 의심"; T.en.burst = "burst?";
// An outage's lamps: "보안등 8개" / "8 lamps"; the detail lists at most LAMPS_LISTED of them (the
// incident report lists all).
T.ko.lamps_n = (n) => `보안등 ${n}개`; T.en.lamps_n = (n) => `${n} lamp${n === 1 ? "" : "s"}`;
T.ko.more_n = (n) => `외 ${n}개 (보고서에 전체)`; T.en.more_n = (n) => `and ${n} more (all in the report)`;
const LAMPS_LISTED = 300;
const t = (k) => (T[S.lang] && T[S.lang][k]) || k;

function applyLang() {
  document.documentElement.lang = S.lang;
  document.querySelectorAll("[data-ko]").forEach((el) => { el.textContent = el.dataset[S.lang]; });
  $("lang").textContent = S.lang === "ko" ? "EN" : "한국어";
  setSound(S.sound);
  setConn(S.ws && S.ws.readyState === 1);
  renderList();
  renderDetail();
  MapView.relabel(S.lang);
  if (S.lamp) renderLamp(S.lamp);
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
// Three beeps on a new SOS, then again every few seconds while any SOS is unacknowledged.
const BEEP_EVERY_MS = 5000;

function beep() {
  if (!S.sound) return;
  try {
    S.audio = S.audio || new AudioContext();
    const ctx = S.audio;
    if (ctx.state === "suspended") ctx.resume();
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

function setSound(on) {
  S.sound = on;
  localStorage.setItem("sl.sound", on ? "on" : "off");
  $("sound").textContent = t(on ? "sound_on" : "sound_off");
  $("sound").setAttribute("aria-pressed", String(on));
}

function openSos() { return [...S.alerts.values()].filter((a) => a.kind === "sos" && a.state === "open"); }

function alarm() {
  // Keep beeping while an SOS waits for someone; stop as soon as none does.
  const waiting = openSos().length > 0;
  if (waiting && !S.beepTimer) S.beepTimer = setInterval(() => { if (openSos().length) beep(); }, BEEP_EVERY_MS);
  if (!waiting && S.beepTimer) { clearInterval(S.beepTimer); S.beepTimer = null; }
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
  // End the session on the server too (its token is refused from now on); the answer is not awaited.
  if (S.token) fetch("/v1/auth/logout", { method: "POST", headers: { Authorization: "Bearer " + S.token }, keepalive: true }).catch(() => {});
  S.token = null; sessionStorage.removeItem("sl.token");
  if (S.ws) { S.ws.onclose = null; S.ws.close(); S.ws = null; }
  clearInterval(S.lampTimer); clearInterval(S.beepTimer); S.beepTimer = null;
  MapView.destroy(); S.map = null; S.mapReady = false; // the next login may see other districts
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
    if (ev.code === 4001) { location.reload(); return; } // role or district changed: start again with the new view
    // Capped exponential backoff with jitter, as every reconnect in this project.
    const delay = Math.random() * Math.min(10000, 500 * Math.pow(1.5, Math.min(10, S.wsAttempt++)));
    setTimeout(() => { if (S.token) connect(); }, delay);
  };
}

function onMessage(m) {
  if (m.type === "hello") { S.lastEventId = Math.max(S.lastEventId, m.event_id); return; }
  if (m.type === "lamp") { refreshLampsSoon(); if (S.lamp && m.device_id === S.lamp.lamp.device_id) refreshLampCommands(); return; }
  if (m.type !== "alert") return;
  const a = m.alert;
  const old = S.alerts.get(a.id);
  if (old && old.event_id > a.event_id) return;
  S.alerts.set(a.id, a);
  S.lastEventId = Math.max(S.lastEventId, m.event_id);
  if (a.kind === "sos" && a.state === "open" && (!old || old.state !== "open")) beep();
  renderList();
  renderAlertsOnMap();
  if (a.kind === "sos") refreshLampsSoon(); // the controller blinks the lamps around an SOS
  if (S.selected === a.id) loadDetail(a.id);
}

// ---------------------------------------------------------------- list and detail
// 24-hour HH:MM:SS in both languages: one glance, no 오전/오후 or AM/PM to parse at 3 a.m.
function fmtTime(iso) { return iso ? new Date(iso).toLocaleTimeString("en-GB", { hour12: false }) : ""; }

function renderList() {
  const ul = $("alert-list");
  if (!ul) return;
  const order = { open: 0, acknowledged: 1, dispatched: 2, resolved: 3, cancelled: 4 };
  // An active SOS is on top of every maintenance alert (an outage, a fault); within a state, a
  // suspected burst goes below the others: a real SOS is never buried under a flood.
  const sosFirst = (a) => (a.kind === "sos" && order[a.state] < 3 ? 0 : 1);
  const items = [...S.alerts.values()].sort((a, b) => (sosFirst(a) - sosFirst(b)) || (order[a.state] - order[b.state]) || (!!a.suspected_burst - !!b.suspected_burst) || (b.created_at > a.created_at ? 1 : -1));
  ul.replaceChildren(...items.map((a) => {
    const li = document.createElement("li");
    li.dataset.alertId = a.id; li.dataset.state = a.state; li.dataset.kind = a.kind; li.dataset.count = String(a.count);
    if (a.suspected_burst) { li.dataset.burst = a.burst_group || ""; li.title = `${t("burst")} ${a.burst_group || ""}`; }
    if (a.id === S.selected) li.classList.add("selected");
    li.innerHTML = `<span class="st"></span><span class="kind"></span> <span class="time"></span><div class="place"></div>`;
    li.querySelector(".st").textContent = t(a.state);
    const count = a.kind === "mass_outage" ? ` · ${t("lamps_n")(a.count)}` : a.count > 1 ? ` ×${a.count}` : "";
    li.querySelector(".kind").textContent = t(a.kind) + count + (a.suspected_burst ? ` · ${t("burst")}` : "");
    li.querySelector(".time").textContent = fmtTime(a.created_at);
    li.querySelector(".place").textContent = S.lang === "ko" ? a.place_text_ko : a.place_text_en;
    li.onclick = () => select(a.id);
    return li;
  }));
  const open = items.filter((a) => a.kind === "sos" && a.state === "open");
  $("sos-banner").hidden = open.length === 0;
  $("sos-banner-count").textContent = String(open.length);
  $("sos-banner-place").textContent = open.length ? (S.lang === "ko" ? open[0].place_text_ko : open[0].place_text_en) : "";
  document.title = (open.length ? `(${open.length}) SOS · ` : "") + (S.lang === "ko" ? "보안등 관제" : "Streetlight control");
  alarm();
}

// Selecting an alert shows its street block (about 900 m across); Z goes back to the whole district.
function select(id) {
  const a = S.alerts.get(id);
  if (a && a.place && S.mapReady && S.selected !== id) {
    if (!(a.kind === "mass_outage" && MapView.focusAreas(MapView.outageAreas(a)))) MapView.focus(a.place.lat, a.place.lon);
  }
  S.selected = id; renderList(); loadDetail(id);
}

let detail = null;
async function loadDetail(id) {
  try { detail = await api(`/v1/alerts/${encodeURIComponent(id)}`); } catch (e) { $("action-error").textContent = e.message; return; }
  await loadAreaNames();
  renderDetail();
  renderTrack();
  loadCameras(id);
}

// The cameras near the selected SOS's latest position (map.js: the cameras layer); refreshed with
// the detail, so a new position of the track brings the cameras there.
async function loadCameras(id) {
  let cams = null;
  if (detail && detail.alert.kind === "sos") {
    try { cams = (await api(`/v1/alerts/${encodeURIComponent(id)}/cameras`)).cameras; } catch (e) { cams = null; }
  }
  if (S.mapReady && S.selected === id) MapView.setCameras(cams);
}

// An outage's neighbourhoods by name (the map's polygons carry the gazetteer's names), in both
// languages so that the toggle needs no request.
let areaNames = null;
async function loadAreaNames() {
  areaNames = null;
  const a = detail && detail.alert;
  if (!a || a.kind !== "mass_outage" || !S.mapReady) return;
  const codes = MapView.outageAreas(a), district = a.place.district_code || (a.centres || [])[0];
  const [ko, en] = await Promise.all(["ko", "en"].map((lang) => MapView.areaNames(district, codes, lang, fetchDongs)));
  areaNames = { alertId: a.id, ko, en };
}

// An outage's neighbourhoods and its lamps by the numbers on their poles (GET /v1/lamps; the
// device id while the register has no number); a lamp opens its panel (a button: Tab and Enter).
function renderOutage() {
  const a = detail && detail.alert;
  const show = !!a && a.kind === "mass_outage";
  $("detail-outage").hidden = !show;
  if (!show) return;
  const names = areaNames && areaNames.alertId === a.id ? areaNames[S.lang] : MapView.outageAreas(a).map((code) => ({ code, name: code }));
  $("detail-areas").replaceChildren(...names.map((n) => {
    const li = document.createElement("li");
    li.dataset.dongCode = n.code; li.textContent = n.name;
    return li;
  }));
  $("detail-lamp-count").textContent = `(${a.count})`;
  const numbered = a.device_ids.map((id) => ({ id, number: (S.lampInfo.get(id) || {}).lamp_number || "" }));
  numbered.sort((p, q) => (p.number || p.id).localeCompare(q.number || q.id, "ko", { numeric: true }));
  const items = numbered.slice(0, LAMPS_LISTED).map((l) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button"; b.className = "lamp-link"; b.dataset.deviceId = l.id; b.title = l.id;
    b.textContent = l.number || l.id;
    b.onclick = () => showLamp(l.id);
    li.append(b);
    return li;
  });
  if (numbered.length > LAMPS_LISTED) {
    const li = document.createElement("li");
    li.className = "hint"; li.textContent = t("more_n")(numbered.length - LAMPS_LISTED);
    items.push(li);
  }
  $("detail-lamps").replaceChildren(...items);
}

function renderDetail() {
  if (!detail || !$("detail")) return;
  const a = detail.alert;
  $("detail-empty").hidden = true; $("detail").hidden = false;
  $("detail").dataset.alertId = a.id; $("detail").dataset.state = detail.state;
  $("detail-title").textContent = `${t(a.kind)} · ${fmtTime(a.created_at)}`;
  $("detail-id").textContent = a.id;
  const st = $("detail-state"); st.className = "state " + detail.state; st.textContent = t(detail.state);
  $("detail-place-ko").textContent = a.place_text_ko; $("detail-place-en").textContent = a.place_text_en;
  const allowed = new Set(detail.allowed_actions);
  $("btn-ack").disabled = !allowed.has("acknowledge");
  $("btn-dispatch").disabled = !allowed.has("dispatch");
  $("btn-resolve").disabled = !allowed.has("resolve");
  $("btn-cancel").disabled = !allowed.has("cancel");
  renderCallback(a);
  renderOutage();
  $("timeline").replaceChildren(...a.timeline.map((e) => {
    const li = document.createElement("li");
    const extra = Object.entries(e.details || {}).map(([k, v]) => `${k}=${v}`).join(" ");
    li.textContent = `${fmtTime(e.at)} ${t(e.action)} — ${e.actor}${e.note ? " · " + e.note : ""}${extra ? " · " + extra : ""}`;
    return li;
  }));
  $("track").replaceChildren(...detail.track.map((p) => {
    const li = document.createElement("li");
    li.textContent = `${fmtTime(p.ts)} ${p.lat.toFixed(5)}, ${p.lon.toFixed(5)}${p.accuracy_m != null ? ` ±${Math.round(p.accuracy_m)} m` : ""}`;
    return li;
  }));
}

// Call-back (docs/security.md): the number is fetched only on the operator's click (audited), shown as
// a tel: link for this alert only, and forgotten when another alert is selected.
let revealed = null;
function renderCallback(a) {
  const cb = detail.callback;
  const open = cb && cb.phone_registered && ["open", "acknowledged", "dispatched"].includes(detail.state);
  $("callback").hidden = !open;
  if (!revealed || revealed.alert_id !== a.id || !open) revealed = null;
  const tel = $("callback-tel");
  tel.hidden = !revealed;
  if (revealed) { tel.href = revealed.tel; tel.textContent = revealed.number; } else { tel.removeAttribute("href"); tel.textContent = ""; }
  $("btn-dial").hidden = !(cb && cb.pbx);
}

async function revealNumber() {
  if (!S.selected) return;
  $("action-error").textContent = "";
  try {
    revealed = await api(`/v1/alerts/${encodeURIComponent(S.selected)}/callback/reveal`, { method: "POST", body: "{}" });
    await loadDetail(S.selected);
  } catch (e) { $("action-error").textContent = e.message; }
}

$("btn-reveal").onclick = revealNumber;
$("callback-tel").onclick = () => act("callback/outcome", { outcome: "placed" });
$("btn-dial").onclick = () => act("callback/dial");
$("btn-call-answered").onclick = () => act("callback/outcome", { outcome: "answered" });
$("btn-call-no-answer").onclick = () => act("callback/outcome", { outcome: "no_answer" });

async function act(action, body) {
  if (!S.selected) return;
  $("action-error").textContent = "";
  try {
    await api(`/v1/alerts/${encodeURIComponent(S.selected)}/${action}`, { method: "POST", body: JSON.stringify(body || {}) });
    await loadDetail(S.selected);
  } catch (e) { $("action-error").textContent = e.message; }
}

// ---------------------------------------------------------------- map (map.js: Leaflet)
// The basemap (GET /v1/map: a tile server, or none and the polygons are the map), the districts
// and, for one district's operator, its neighbourhoods.
async function loadMap() {
  if (S.mapReady) return;
  const mine = S.me.districts;
  const [cfg, all, dongs] = await Promise.all([
    api("/v1/map"),
    api("/v1/districts"),
    mine && mine.length === 1 ? api(`/v1/districts?level=dong&district=${mine[0]}`) : null,
  ]);
  S.map = MapView.init($("map"), cfg.tiles, all, mine, dongs, S.lang);
  S.mapReady = true;
}

function zoomHome() { MapView.home(); }

const fetchDongs = (district) => api(`/v1/districts?level=dong&district=${encodeURIComponent(district)}`);

let lampsSoon = null;
function refreshLampsSoon() { if (!lampsSoon) lampsSoon = setTimeout(() => { lampsSoon = null; refreshLamps(); }, 300); }

async function refreshLamps() {
  if (!S.mapReady || !S.token) return;
  try {
    // Walkers are residents' positions: the maintenance role gets none (403), so it does not ask.
    const wantWalkers = S.me && S.me.role !== "maintenance";
    const [lamps, walkers] = await Promise.all([api("/v1/lamps"), wantWalkers ? api("/v1/walkers") : { walkers: [] }]);
    MapView.setLamps(lamps.features, showLamp);
    S.lampInfo = new Map(lamps.features.map((f) => [f.id, f.properties]));
    if (detail && detail.alert.kind === "mass_outage") renderOutage(); // the lamp numbers arrived
    MapView.setWalkers(walkers.walkers);
  } catch (e) { /* next refresh */ }
  renderAlertsOnMap();
}

function renderAlertsOnMap() {
  if (S.mapReady) MapView.setAlerts([...S.alerts.values()], select, fetchDongs);
}

function renderTrack() {
  if (S.mapReady) MapView.setTrack(detail ? detail.track : null);
}

async function showLamp(id) {
  try { S.lamp = await api(`/v1/lamps/${encodeURIComponent(id)}`); } catch (e) { return; }
  renderLamp(S.lamp);
}

// The last 24 h from the hourly rollups, one column per hour placed by its time:
// level (bars, 0-100 %), power (line, scaled to the day's maximum), and online as uptime per
// hour (the strip under the bars: green for the share of the hour the lamp reported, red for
// the rest; an hour without any rollup is all red). The open hour counts only its elapsed part.
function renderLamp(r) {
  const NS = "http://www.w3.org/2000/svg", HOUR = 3600e3;
  const el = (name, attrs, text) => {
    const e = document.createElementNS(NS, name);
    Object.entries(attrs).forEach(([k, v]) => e.setAttribute(k, v));
    if (text != null) e.textContent = text;
    svg.appendChild(e); return e;
  };
  $("lamp-panel").hidden = false;
  $("lamp-panel").dataset.deviceId = r.lamp.device_id;
  $("lamp-title").textContent = `${r.lamp.lamp_number || r.lamp.device_id}`;
  const dongName = S.lang === "ko" ? r.lamp.dong : (r.lamp.dong_en || r.lamp.dong);
  $("lamp-place").textContent = [dongName, r.lamp.address].filter(Boolean).join(" · ");
  $("lamp-state").textContent = `${t(r.lamp.state)} · ${r.lamp.level ?? "?"}%${r.lamp.faults.length ? " · " + r.lamp.faults.join(", ") : ""}`;
  const svg = $("lamp-chart"); svg.replaceChildren();
  const L = 30, W = 420, TOP = 8, BASE = 108, STRIP = 10, now = Date.now();
  const first = Math.floor(now / HOUR) * HOUR - 23 * HOUR; // the 24 columns end with the open hour
  const bw = W / 24;
  const byHour = new Map(r.hours.map((h) => [Math.floor(Date.parse(h.bucket) / HOUR) * HOUR, h]));
  const maxP = Math.max(1, ...r.hours.map((h) => h.power_avg_w || 0));
  [0, 50, 100].forEach((v) => {
    const y = BASE - (v / 100) * (BASE - TOP);
    el("line", { x1: L, x2: L + W, y1: y, y2: y, class: "grid" });
    el("text", { x: L - 4, y: y + 4, "text-anchor": "end" }, `${v}%`);
  });
  el("text", { x: L + W + 4, y: TOP + 8 }, `${Math.round(maxP)}W`);
  // Hours before the lamp's first record in the window are "no record" (not installed yet, or
  // history older than the rollups), not offline.
  const firstSeen = Math.min(...byHour.keys());
  let line = "", uptimeTotal = 0, spanTotal = 0;
  for (let i = 0; i < 24; i++) {
    const at = first + i * HOUR, h = byHour.get(at), x = L + i * bw;
    if (i % 6 === 0 || i === 23) {
      const hh = String(new Date(at).getHours()).padStart(2, "0");
      el("text", { x: x + bw / 2, y: BASE + STRIP + 20, "text-anchor": "middle" }, hh + (S.lang === "ko" ? "시" : ":00"));
    }
    if (!h && !(at > firstSeen)) {
      el("rect", { x: x + 1, y: BASE + 4, width: bw - 2, height: STRIP, class: "nodata", "data-hour": new Date(at).toISOString(), "data-up": "" });
      continue;
    }
    const span = Math.max(1, Math.min(3600, (now - at) / 1000));
    const up = h ? Math.min(1, (h.uptime_s || 0) / span) : 0;
    uptimeTotal += up * span; spanTotal += span;
    if (h) {
      const lv = Math.max(0, Math.min(100, h.level_avg || 0)) / 100 * (BASE - TOP);
      el("rect", { x: x + 1, y: BASE - lv, width: bw - 2, height: lv, class: "level" });
      line += `${line ? "L" : "M"}${(x + bw / 2).toFixed(1)},${(BASE - ((h.power_avg_w || 0) / maxP) * (BASE - TOP)).toFixed(1)}`;
    }
    el("rect", { x: x + 1, y: BASE + 4, width: bw - 2, height: STRIP, class: "down", "data-hour": new Date(at).toISOString(), "data-up": up.toFixed(2) });
    if (up > 0) el("rect", { x: x + 1, y: BASE + 4 + STRIP * (1 - up), width: bw - 2, height: STRIP * up, class: "up" });
  }
  if (line) el("path", { d: line, class: "power" });
  line.split(/[ML]/).filter(Boolean).forEach((pt) => { const [cx, cy] = pt.split(","); el("circle", { cx, cy, r: 2.5, class: "power-dot" }); });
  const pct = spanTotal ? Math.round((uptimeTotal / spanTotal) * 100) : null;
  el("text", { x: L + W + 4, y: BASE + STRIP + 2 }, pct == null ? "–" : `${pct}%`);
  if (!r.hours.length) el("text", { x: L + W / 2, y: BASE / 2, "text-anchor": "middle" }, t("no_data"));
  $("lamp-chart").dataset.uptimePct = pct == null ? "" : String(pct);
  renderLampCommands(r.commands || []);
}

// The operators' commands to the lamp in the panel and what became of each (the lamp detail's
// `commands`, then GET /v1/lamps/{id}/commands every 1.5 s while one of them is not final, and
// at once when the stream says the lamp was commanded).
const CMD_T = {
  ko: { set_level: "밝기", clear: "해제", pending: "대기", sent: "전송됨", applied: "적용됨", rejected: "거부됨", expired: "만료",
        unanswered: "응답 없음", undelivered: "전달 안 됨", unknown_device: "등록되지 않은 기기", offline: "기기 끊김", not_sent: "보내기 전 만료" },
  en: { set_level: "level", clear: "clear", pending: "pending", sent: "sent", applied: "applied", rejected: "rejected", expired: "expired",
        unanswered: "no answer", undelivered: "undelivered", unknown_device: "unknown device", offline: "lamp offline", not_sent: "expired before sending" },
};
const ct = (k) => (CMD_T[S.lang] && CMD_T[S.lang][k]) || k;
let lampCmdTimer = null;

function renderLampCommands(commands) {
  const ul = $("lamp-commands"); ul.replaceChildren();
  for (const c of commands) {
    const li = document.createElement("li");
    li.dataset.cmdId = c.cmd_id; li.dataset.status = c.status;
    const at = new Date(c.asked_at).toLocaleTimeString(S.lang === "ko" ? "ko-KR" : "en-GB", { hour12: false });
    const what = c.action === "set_level" ? `${ct("set_level")} ${c.level}%` : ct(c.action);
    li.append(`${at} · ${what} · `);
    const st = document.createElement("span");
    st.className = `status ${c.status}`;
    st.textContent = ct(c.status) + (c.reason ? ` (${ct(c.reason)})` : "");
    li.append(st, ` · ${c.source}`);
    ul.appendChild(li);
  }
  clearTimeout(lampCmdTimer); lampCmdTimer = null;
  if (commands.some((c) => !c.final)) lampCmdTimer = setTimeout(refreshLampCommands, 1500);
}

async function refreshLampCommands() {
  const id = S.lamp && S.lamp.lamp.device_id;
  if (!id || !S.token || $("lamp-panel").hidden) return;
  let r;
  try { r = await api(`/v1/lamps/${encodeURIComponent(id)}/commands`); } catch (e) { r = null; }
  if (!S.lamp || S.lamp.lamp.device_id !== id) return; // another lamp was opened meanwhile
  if (r) { S.lamp.commands = r.commands; renderLampCommands(r.commands); }
  else { clearTimeout(lampCmdTimer); lampCmdTimer = setTimeout(refreshLampCommands, 3000); }
}

// ---------------------------------------------------------------- wiring
$("login-form").addEventListener("submit", login);
$("logout").onclick = logout;
function toggleLang() { S.lang = S.lang === "ko" ? "en" : "ko"; localStorage.setItem("sl.lang", S.lang); applyLang(); }
function toggleSound() { setSound(!S.sound); if (S.sound) beep(); }
$("lang").onclick = toggleLang;
$("zoom-all").onclick = zoomHome;
$("sound").onclick = toggleSound;
// Browsers start audio only after a gesture: any click or key wakes the audio context.
["pointerdown", "keydown"].forEach((k) => document.addEventListener(k, () => { if (S.audio && S.audio.state === "suspended") S.audio.resume(); }, true));
$("btn-ack").onclick = () => act("acknowledge");
$("btn-dispatch").onclick = () => act("dispatch", { unit: $("dispatch-unit").value, note: $("dispatch-note").value });
$("btn-resolve").onclick = () => act("resolve", { outcome: $("resolve-outcome").value });
$("btn-cancel").onclick = () => { if (confirm(S.lang === "ko" ? "오경보로 취소할까요?" : "Cancel as a false alarm?")) act("cancel"); };
// Shortcuts: A acknowledge, D dispatch, R resolve, L language, M sound, Z whole district, + and -
// zoom the map (arrows pan it when it has the focus: Leaflet's own keys), Esc leaves a field.
// Never while typing in a field, never with Ctrl/Alt/Meta (Ctrl+R still reloads).
// A field one types into; a checkbox or radio (the map's layer control) keeps the shortcuts.
const isTyping = (el) => el instanceof HTMLTextAreaElement || (el instanceof HTMLInputElement && !["checkbox", "radio", "button", "submit"].includes(el.type));
document.addEventListener("keydown", (ev) => {
  if ($("console-view").hidden || ev.ctrlKey || ev.altKey || ev.metaKey || ev.repeat) return;
  if (isTyping(ev.target)) {
    if (ev.key === "Escape") ev.target.blur();
    return;
  }
  const key = ev.key.toLowerCase();
  if (key === "a") {
    // A acknowledges the selected alert when it is open, else the oldest open SOS that is not a
    // suspected burst, else the oldest open SOS (else the oldest open alert).
    const sel = S.selected && S.alerts.get(S.selected);
    if (!sel || sel.state !== "open") {
      const byAge = (a, b) => (a.created_at > b.created_at ? 1 : -1);
      const open = [...S.alerts.values()].filter((a) => a.state === "open").sort(byAge);
      const next = open.find((a) => a.kind === "sos" && !a.suspected_burst) || open.find((a) => a.kind === "sos") || open[0];
      if (next) { S.selected = next.id; renderList(); }
    }
    act("acknowledge");
  } else if (key === "d") act("dispatch", { unit: $("dispatch-unit").value, note: $("dispatch-note").value });
  else if (key === "r") act("resolve", { outcome: $("resolve-outcome").value });
  else if (key === "l") toggleLang();
  else if (key === "z") zoomHome();
  else if ((key === "+" || key === "=" || key === "-") && !$("map").contains(ev.target)) MapView.zoomBy(key === "-" ? -1 : 1);
  else if (key === "m") toggleSound();
  else return;
  ev.preventDefault();
});
applyLang();
if (S.token) start().catch(() => logout());
