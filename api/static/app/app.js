// The Safety page (/app/): the reference client of the resident API (docs/api.md).
// Register, safe walk from the browser's geolocation (positions over the walk's WebSocket), SOS by
// button or by shaking the phone, the SOS's live status (/v1/sos/{id}/live), call-back consent.
// No inline script (the API's Content-Security-Policy forbids it); everything talks to this origin.
'use strict';

// A shake: the acceleration (with gravity) above SHAKE.threshold m/s² (about 2.5 g; gravity alone
// is 9.8) SHAKE.peaks times within SHAKE.windowMs, peaks at least SHAKE.gapMs apart (one swing is
// one peak). Walking or a phone dropped on a sofa gives one or two peaks, not three in 1.5 s.
const SHAKE = { threshold: 25, peaks: 3, windowMs: 1500, gapMs: 150, cooldownMs: 10000 };
const POSITION_EVERY_MS = 600; // the API takes at most 2 positions a second per walk
const STORE = 'safeWayHome';

const TEXT = {
  ko: {
    registered: '등록되었습니다.',
    locating: '위치를 확인하는 중…',
    walking: (n) => `안심 귀가 중 · 앞쪽 가로등 ${n}개를 밝히고 있습니다`,
    walkEnded: '귀가를 마쳤습니다.',
    noGeo: '위치를 쓸 수 없습니다. 위치 권한을 허용해 주세요.',
    sending: 'SOS를 보내는 중…',
    open: 'SOS 접수됨 · 관제센터 연결 중',
    acknowledged: '관제센터가 SOS를 확인했습니다',
    dispatched: '출동했습니다',
    resolved: 'SOS가 종료되었습니다',
    cancelled: 'SOS가 취소되었습니다',
    reconnecting: '연결이 끊겨 다시 연결하는 중…',
    created: '접수',
    unit: '출동',
    callbackSaved: (n) => `${n} 번호를 등록했습니다. SOS 때 관제센터가 이 번호로 전화할 수 있습니다.`,
    callbackOff: '전화 받기를 껐습니다. 등록한 번호는 삭제되었습니다.',
    callbackInvalid: (d) => `이 번호는 쓸 수 없습니다 (${d}). 010-1234-5678처럼 입력해 주세요.`,
    callbackUnavailable: '이 관제센터는 전화 받기(콜백)를 제공하지 않습니다. 번호는 보내지 않았습니다.',
    callbackRetry: '서버에 연결할 수 없습니다. 연결되면 다시 보냅니다.',
    callbackNeedPhone: '휴대전화 번호를 입력해 주세요.',
    failed: (s) => `요청이 실패했습니다 (${s}). 다시 시도해 주세요.`,
  },
  en: {
    registered: 'Registered.',
    locating: 'Finding your position…',
    walking: (n) => `Safe walk on · ${n} lamps ahead brightened`,
    walkEnded: 'Walk ended.',
    noGeo: 'Your position is not available. Please allow location access.',
    sending: 'Sending SOS…',
    open: 'SOS received · waiting for the control centre',
    acknowledged: 'The control centre has seen your SOS',
    dispatched: 'Help is on the way',
    resolved: 'Your SOS is closed',
    cancelled: 'Your SOS was cancelled',
    reconnecting: 'Connection lost, reconnecting…',
    created: 'received',
    unit: 'dispatched',
    callbackSaved: (n) => `Registered ${n}. The control centre may call you on it during an SOS.`,
    callbackOff: 'Call-back turned off. Your number was deleted.',
    callbackInvalid: (d) => `This number cannot be used (${d}). Enter it like 010-1234-5678.`,
    callbackUnavailable: 'This control centre does not offer call-back. Your number was not sent.',
    callbackRetry: 'Cannot reach the server. Will send again once connected.',
    callbackNeedPhone: 'Please enter your mobile number.',
    failed: (s) => `The request failed (${s}). Please try again.`,
  },
};

const App = {
  lang: (navigator.language || 'ko').toLowerCase().startsWith('ko') ? 'ko' : 'en',
  saved: {}, // token, residentId, sos {id, eventId}, callback {consent, phone, synced}
  callbackRetry: null, // the timer of the next call-back retry after a network error
  fix: null, // the latest {lat, lon, accuracy_m, heading_deg, speed_mps, t}
  walk: null, // {id, socket, watch, lamps, last, sentAt, timer}
  sos: null, // {id, socket, eventId, state, retry}
  peaks: [],
  lastShakeSos: 0,
  positionsSent: 0,
  lampsTold: [],
};
window.App = App;

const $ = (id) => document.getElementById(id);
const t = (key, ...args) => {
  const v = TEXT[App.lang][key];
  return typeof v === 'function' ? v(...args) : v;
};

function load() {
  try { App.saved = JSON.parse(localStorage.getItem(STORE) || '{}'); } catch { App.saved = {}; }
}
function save() { localStorage.setItem(STORE, JSON.stringify(App.saved)); }
function showError(text) { $('error').textContent = text || ''; }

function applyLang() {
  document.documentElement.lang = App.lang;
  document.querySelectorAll('[data-ko]').forEach((el) => { el.textContent = el.dataset[App.lang]; });
  document.querySelectorAll('[data-ko-placeholder]').forEach((el) => {
    el.placeholder = el.dataset[App.lang === 'ko' ? 'koPlaceholder' : 'enPlaceholder'];
  });
  $('lang').textContent = App.lang === 'ko' ? 'EN' : '한국어';
  if (App.sos) renderSos(App.sos.last);
  if (App.walk) $('walk-status').textContent = t('walking', App.walk.lamps.length);
}

async function api(method, path, body, headers = {}) {
  const init = { method, headers: { ...headers } };
  if (App.saved.token) init.headers.Authorization = `Bearer ${App.saved.token}`;
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  let data = null;
  try { data = await r.json(); } catch { data = null; }
  return { status: r.status, data };
}

function wsUrl(path) {
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}${path}`;
}

// ------------------------------------------------------------------ registration

async function register() {
  showError('');
  const r = await api('POST', '/v1/residents');
  if (r.status !== 201) { showError(t('failed', r.status)); return; }
  App.saved.token = r.data.token;
  App.saved.residentId = r.data.resident_id;
  save();
  showApp();
  $('walk-status').textContent = t('registered');
}

function showApp() {
  $('register-view').hidden = true;
  $('app-view').hidden = false;
  const cb = App.saved.callback || {};
  $('callback-consent').checked = !!cb.consent;
  $('phone').value = cb.phone || '';
  if (cb.synced === false) syncCallback(false); // a change a network error kept from the server
  if (App.saved.sos && App.saved.sos.id) followSos(App.saved.sos.id, App.saved.sos.eventId || 0);
}

// ------------------------------------------------------------------ position

function bearing(a, b) {
  const rad = Math.PI / 180;
  const y = Math.sin((b.lon - a.lon) * rad) * Math.cos(b.lat * rad);
  const x = Math.cos(a.lat * rad) * Math.sin(b.lat * rad)
    - Math.sin(a.lat * rad) * Math.cos(b.lat * rad) * Math.cos((b.lon - a.lon) * rad);
  return (Math.atan2(y, x) / rad + 360) % 360;
}
function metres(a, b) {
  const dy = (b.lat - a.lat) * 111320;
  const dx = (b.lon - a.lon) * 111320 * Math.cos(a.lat * Math.PI / 180);
  return Math.hypot(dx, dy);
}

function onFix(pos) {
  const c = pos.coords;
  const fix = {
    lat: c.latitude,
    lon: c.longitude,
    accuracy_m: Math.min(Math.max(c.accuracy || 10, 0.1), 5000),
    t: pos.timestamp || Date.now(),
  };
  const prev = App.fix;
  if (Number.isFinite(c.heading) && Number.isFinite(c.speed) && c.speed > 0) {
    fix.heading_deg = c.heading;
    fix.speed_mps = c.speed;
  } else if (prev && metres(prev, fix) >= 1) {
    // The browser gave no heading (most do not): from the last two fixes, so the lamps ahead light.
    fix.heading_deg = bearing(prev, fix);
    const dt = Math.max(0.2, (fix.t - prev.t) / 1000);
    fix.speed_mps = Math.min(metres(prev, fix) / dt, 60);
  }
  App.fix = fix;
  if (App.walk) queuePosition();
}

function position(f) {
  const p = { lat: f.lat, lon: f.lon, accuracy_m: f.accuracy_m };
  if (f.heading_deg !== undefined) { p.heading_deg = f.heading_deg; p.speed_mps = f.speed_mps; }
  return p;
}

function currentFix(timeoutMs = 8000) {
  if (App.fix) return Promise.resolve(App.fix);
  return new Promise((resolve, reject) => {
    if (!navigator.geolocation) { reject(new Error('no geolocation')); return; }
    navigator.geolocation.getCurrentPosition((p) => { onFix(p); resolve(App.fix); }, reject,
      { enableHighAccuracy: true, timeout: timeoutMs, maximumAge: 5000 });
  });
}

// ------------------------------------------------------------------ safe walk

async function startWalk() {
  showError('');
  $('walk-start').disabled = true;
  $('walk-status').textContent = t('locating');
  const watch = navigator.geolocation
    ? navigator.geolocation.watchPosition(onFix, () => {}, { enableHighAccuracy: true, maximumAge: 0 })
    : null;
  let fix;
  try {
    fix = await currentFix();
  } catch {
    if (watch !== null) navigator.geolocation.clearWatch(watch);
    $('walk-start').disabled = false;
    showError(t('noGeo'));
    return;
  }
  const r = await api('POST', '/v1/walks', position(fix));
  if (r.status !== 201) {
    if (watch !== null) navigator.geolocation.clearWatch(watch);
    $('walk-start').disabled = false;
    showError(t('failed', (r.data && r.data.detail) || r.status));
    return;
  }
  App.walk = { id: r.data.walk_id, socket: null, watch, lamps: r.data.lamps || [], last: fix, sentAt: 0, timer: null };
  App.lampsTold = [...App.walk.lamps];
  $('walk-start').hidden = true;
  $('walk-start').disabled = false;
  $('walk-end').hidden = false;
  $('walk-status').textContent = t('walking', App.walk.lamps.length);
  openWalkSocket();
}

function openWalkSocket() {
  const walk = App.walk;
  if (!walk) return;
  const ws = new WebSocket(wsUrl(`/v1/walks/${encodeURIComponent(walk.id)}/live`));
  walk.socket = ws;
  walk.ready = false;
  ws.onopen = () => ws.send(JSON.stringify({ token: App.saved.token }));
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.status === 'live') { walk.ready = true; queuePosition(); return; }
    if (Array.isArray(m.lamps)) {
      walk.lamps = m.lamps;
      m.lamps.forEach((id) => { if (!App.lampsTold.includes(id)) App.lampsTold.push(id); });
      $('walk-status').textContent = t('walking', m.lamps.length);
    } else if (m.status === 409) {
      finishWalkView();
    }
  };
  ws.onclose = (e) => {
    if (App.walk === walk && e.code !== 1000 && e.code !== 1008) setTimeout(openWalkSocket, 1000);
  };
}

function queuePosition() {
  const walk = App.walk;
  if (!walk || !walk.ready || !App.fix || App.fix === walk.last || walk.timer) return;
  const wait = Math.max(0, walk.sentAt + POSITION_EVERY_MS - Date.now());
  walk.timer = setTimeout(() => {
    walk.timer = null;
    if (App.walk !== walk || !walk.socket || walk.socket.readyState !== WebSocket.OPEN) return;
    walk.last = App.fix;
    walk.sentAt = Date.now();
    walk.socket.send(JSON.stringify(position(App.fix)));
    App.positionsSent += 1;
  }, wait);
}

function finishWalkView() {
  const walk = App.walk;
  App.walk = null;
  if (walk) {
    if (walk.watch !== null) navigator.geolocation.clearWatch(walk.watch);
    if (walk.timer) clearTimeout(walk.timer);
    if (walk.socket) walk.socket.close(1000);
  }
  $('walk-end').hidden = true;
  $('walk-start').hidden = false;
  $('walk-status').textContent = t('walkEnded');
}

async function endWalk() {
  const walk = App.walk;
  if (!walk) return;
  finishWalkView();
  await api('POST', `/v1/walks/${encodeURIComponent(walk.id)}/end`);
}

// ------------------------------------------------------------------ SOS

async function raiseSos(source) {
  showError('');
  $('sos-live').hidden = false;
  setSosStatus('sending', t('sending'));
  let fix;
  try { fix = await currentFix(); } catch { showError(t('noGeo')); setSosStatus('', ''); return; }
  const body = { lat: fix.lat, lon: fix.lon, accuracy_m: fix.accuracy_m };
  if (App.walk) body.walk_id = App.walk.id;
  const key = (crypto.randomUUID && crypto.randomUUID()) || `${Date.now()}-${Math.random()}`;
  let r;
  for (let attempt = 0; attempt < 3; attempt += 1) {
    try {
      r = await api('POST', '/v1/sos', body, { 'Idempotency-Key': key });
      if (r.status !== 503) break;
    } catch { r = { status: 0 }; }
    await new Promise((ok) => setTimeout(ok, 500 * (attempt + 1))); // same key: never two alerts
  }
  if (!r || (r.status !== 202 && r.status !== 429) || !r.data || !r.data.alert_id) {
    showError(t('failed', (r && r.status) || 'network'));
    setSosStatus('', '');
    return;
  }
  App.lastSosSource = source;
  if (!App.sos || App.sos.id !== r.data.alert_id) followSos(r.data.alert_id, 0);
}

function setSosStatus(state, text) {
  const el = $('sos-status');
  el.dataset.state = state;
  el.textContent = text;
}

function followSos(alertId, eventId) {
  if (App.sos && App.sos.socket) App.sos.socket.close(1000);
  App.sos = { id: alertId, socket: null, eventId, last: null, retry: 0 };
  App.saved.sos = { id: alertId, eventId };
  save();
  $('sos-live').hidden = false;
  $('sos-events').textContent = '';
  if (!$('sos-status').dataset.state || $('sos-status').dataset.state === 'sending') setSosStatus('open', t('open'));
  openSosSocket();
}

function openSosSocket() {
  const sos = App.sos;
  if (!sos) return;
  const ws = new WebSocket(wsUrl(`/v1/sos/${encodeURIComponent(sos.id)}/live?since=${sos.eventId}`));
  sos.socket = ws;
  ws.onopen = () => ws.send(JSON.stringify({ token: App.saved.token }));
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type !== 'status') {
      if (m.error) showError(m.error);
      return;
    }
    sos.retry = 0;
    sos.eventId = m.event_id;
    App.saved.sos = { id: sos.id, eventId: m.event_id };
    save();
    m.events.forEach(addSosEvent);
    sos.last = m;
    renderSos(m);
  };
  ws.onclose = (e) => {
    if (App.sos !== sos) return;
    const closed = sos.last && ['resolved', 'cancelled'].includes(sos.last.status.status);
    if (closed || e.code === 1008) {
      App.saved.sos = null;
      save();
      return;
    }
    sos.retry += 1;
    setTimeout(openSosSocket, Math.min(10000, 500 * 2 ** Math.min(sos.retry, 5)));
    if (sos.retry > 1) $('walk-status').textContent = t('reconnecting');
  };
}

function addSosEvent(ev) {
  const li = document.createElement('li');
  li.dataset.action = ev.action;
  const time = new Date(ev.at).toLocaleTimeString(App.lang === 'ko' ? 'ko-KR' : 'en-GB');
  const word = ev.action === 'created' ? t('created') : ev.action === 'dispatched' ? t('unit') : t(ev.action) || ev.action;
  li.textContent = `${time} · ${word}${ev.unit ? ` (${ev.unit})` : ''}`;
  $('sos-events').appendChild(li);
}

function renderSos(m) {
  if (!m) return;
  const s = m.status;
  let state = 'open';
  if (s.cancelled) state = 'cancelled';
  else if (s.resolved) state = 'resolved';
  else if (s.dispatched) state = 'dispatched';
  else if (s.acknowledged) state = 'acknowledged';
  const unit = state === 'dispatched' && s.unit ? ` · ${s.unit}` : '';
  setSosStatus(state, t(state) + unit);
  $('sos-cancel').hidden = state === 'resolved' || state === 'cancelled';
}

async function cancelSos() {
  if (!App.sos) return;
  const r = await api('POST', `/v1/sos/${encodeURIComponent(App.sos.id)}/cancel`);
  if (r.status !== 200) showError(t('failed', (r.data && r.data.detail) || r.status));
}

// ------------------------------------------------------------------ shake

function onMotion(e) {
  if (!$('shake').checked || !App.saved.token) return;
  const a = e.accelerationIncludingGravity || e.acceleration;
  if (!a || a.x === null) return;
  const g = Math.hypot(a.x || 0, a.y || 0, a.z || 0);
  const now = Date.now();
  if (g < SHAKE.threshold) return;
  const last = App.peaks[App.peaks.length - 1];
  if (last !== undefined && now - last < SHAKE.gapMs) return;
  App.peaks = App.peaks.filter((p) => now - p <= SHAKE.windowMs);
  App.peaks.push(now);
  if (App.peaks.length >= SHAKE.peaks && now - App.lastShakeSos > SHAKE.cooldownMs) {
    App.peaks = [];
    App.lastShakeSos = now;
    raiseSos('shake');
  }
}

async function enableShake() {
  // iOS asks for motion permission, and only from a tap.
  if ($('shake').checked && typeof DeviceMotionEvent !== 'undefined'
      && typeof DeviceMotionEvent.requestPermission === 'function') {
    try { await DeviceMotionEvent.requestPermission(); } catch { /* refused: the button remains */ }
  }
}

// ------------------------------------------------------------------ call-back consent

// PUT /v1/residents/me/phone {number} registers the number (registering it is the consent; the
// API answers it in E.164), DELETE withdraws it. 422: not a number the centre can call (the
// server's state is unchanged); 503: this centre does not take numbers. Only a network error is
// retried (kept in localStorage as synced: false, sent again when online and at the next start).
const CALLBACK_RETRY_MS = 15000;

function callbackNote(state, text) {
  $('callback-note').dataset.state = state;
  $('callback-note').textContent = text;
}

function callbackRetryLater() {
  clearTimeout(App.callbackRetry);
  App.callbackRetry = setTimeout(() => syncCallback(false), CALLBACK_RETRY_MS);
}

async function syncCallback(fromUser) {
  clearTimeout(App.callbackRetry);
  // What the server holds as far as the page knows (after an unsent change: nothing assumed).
  const was = App.saved.callback || { consent: false };
  const before = { consent: was.synced === false ? false : !!was.consent };
  const consent = $('callback-consent').checked;
  const phone = $('phone').value.trim();
  if (consent && !phone) {
    if (fromUser) callbackNote('need-phone', t('callbackNeedPhone'));
    return;
  }
  App.saved.callback = { consent, phone, synced: false };
  save();
  let r;
  try {
    r = consent
      ? await api('PUT', '/v1/residents/me/phone', { number: phone })
      : await api('DELETE', '/v1/residents/me/phone');
  } catch {
    callbackNote('retry', t('callbackRetry'));
    callbackRetryLater();
    return;
  }
  const detail = r.data && typeof r.data.detail === 'string' ? r.data.detail : String(r.status);
  if (r.status === 422) {
    App.saved.callback = { consent: before.consent, phone, synced: true }; // nothing changed on the server
    $('callback-consent').checked = before.consent;
    save();
    callbackNote('invalid', t('callbackInvalid', detail));
    return;
  }
  if (r.status === 503) {
    App.saved.callback = { consent: false, phone, synced: true };
    $('callback-consent').checked = false;
    save();
    callbackNote('unavailable', t('callbackUnavailable'));
    return;
  }
  if (r.status >= 500) { // a server in trouble: like the network, try again later
    callbackNote('retry', t('failed', detail));
    callbackRetryLater();
    return;
  }
  if (r.status >= 400) {
    App.saved.callback = { consent: before.consent, phone, synced: true };
    $('callback-consent').checked = before.consent;
    save();
    callbackNote('error', t('failed', detail));
    return;
  }
  const stored = consent ? r.data.number : phone;
  App.saved.callback = { consent, phone: stored, synced: true };
  save();
  if (consent) $('phone').value = stored;
  callbackNote(consent ? 'saved' : 'off', consent ? t('callbackSaved', stored) : t('callbackOff'));
}

// ------------------------------------------------------------------ start

function start() {
  load();
  if (App.saved.lang) App.lang = App.saved.lang;
  $('lang').addEventListener('click', () => {
    App.lang = App.lang === 'ko' ? 'en' : 'ko';
    App.saved.lang = App.lang;
    save();
    applyLang();
  });
  $('register').addEventListener('click', register);
  $('walk-start').addEventListener('click', startWalk);
  $('walk-end').addEventListener('click', endWalk);
  $('sos-button').addEventListener('click', () => raiseSos('button'));
  $('sos-cancel').addEventListener('click', cancelSos);
  $('shake').addEventListener('change', enableShake);
  $('callback-save').addEventListener('click', () => syncCallback(true));
  $('callback-consent').addEventListener('change', () => syncCallback(true));
  window.addEventListener('online', () => {
    if (App.saved.callback && App.saved.callback.synced === false) syncCallback(false);
  });
  window.addEventListener('devicemotion', onMotion);
  applyLang();
  if (App.saved.token) showApp();
  if ('serviceWorker' in navigator) {
    navigator.serviceWorker.register('/app/sw.js', { scope: '/app/' }).catch(() => {});
  }
  App.ready = true;
}

document.addEventListener('DOMContentLoaded', start);
