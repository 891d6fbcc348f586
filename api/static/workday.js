// The operator's working day: history search (S), shift hand-over (H), incident reports and the
// bulk acknowledgement of maintenance alerts. Uses console.js's globals ($, S, api, t, select).
"use strict";

const W = { cursor: null, params: null, results: [], view: null, opener: null };

function localToIso(value) { return value ? new Date(value).toISOString() : ""; }
function placeText(a) { return (S.lang === "ko" ? a.place_text_ko : a.place_text_en) || ""; }
function fmtDateTime(iso) { return iso ? new Date(iso).toLocaleString("en-GB", { hour12: false }) : ""; }

function openView(id) {
  closeView();
  W.opener = document.activeElement;
  W.view = id;
  $(id).hidden = false;
  if (id === "search-view") $("search-q").focus();
  else { loadHandover(); $("handover-hours").focus(); }
}

function closeView() {
  if (!W.view) return;
  $(W.view).hidden = true; W.view = null;
  if (W.opener && W.opener.focus) W.opener.focus();
}

// ---------------------------------------------------------------- history search
function searchParams() {
  const p = new URLSearchParams({ limit: "100" });
  const add = (k, v) => { if (v) p.append(k, v); };
  add("q", $("search-q").value.trim());
  add("kind", $("search-kind").value);
  add("status", $("search-status").value);
  add("since", localToIso($("search-since").value));
  add("until", localToIso($("search-until").value));
  add("dong", $("search-dong").value.trim());
  return p;
}

async function runSearch(more) {
  $("search-error").textContent = "";
  if (!more) { W.params = searchParams(); W.cursor = null; W.results = []; }
  const p = new URLSearchParams(W.params);
  if (more && W.cursor) p.set("cursor", W.cursor);
  try {
    const r = await api("/v1/alerts/search?" + p.toString());
    W.results = W.results.concat(r.alerts); W.cursor = r.next_cursor;
  } catch (e) { $("search-error").textContent = e.message; return; }
  renderSearch();
}

function reportButtons(li, a) {
  const html = document.createElement("button");
  html.type = "button"; html.className = "report-html secondary";
  html.textContent = S.lang === "ko" ? "보고서 인쇄" : "Print report";
  html.onclick = () => openReport(a.id, "html");
  const csv = document.createElement("button");
  csv.type = "button"; csv.className = "report-csv secondary"; csv.textContent = "CSV";
  csv.onclick = () => openReport(a.id, "csv");
  li.append(html, csv);
}

function renderSearch() {
  $("search-count").textContent = `${W.results.length}${W.cursor ? "+" : ""} ${S.lang === "ko" ? "건" : "alerts"}`;
  $("search-results").replaceChildren(...W.results.map((a) => {
    const li = document.createElement("li");
    li.dataset.alertId = a.id; li.dataset.kind = a.kind; li.dataset.state = a.state;
    if (a.kind !== "sos" && a.state === "open") {
      const box = document.createElement("input");
      box.type = "checkbox"; box.className = "bulk-pick"; box.value = a.id;
      box.setAttribute("aria-label", `${S.lang === "ko" ? "선택" : "select"} ${a.id}`);
      box.onchange = updateBulk;
      li.append(box);
    }
    const open = document.createElement("button");
    open.type = "button"; open.className = "result-open";
    open.textContent = `${t(a.kind)} · ${t(a.state)} · ${fmtDateTime(a.created_at)}`;
    open.onclick = () => { closeView(); if (!S.alerts.has(a.id)) S.alerts.set(a.id, a); select(a.id); };
    const place = document.createElement("div");
    place.className = "place"; place.textContent = placeText(a);
    li.append(open, place);
    reportButtons(li, a);
    return li;
  }));
  $("search-more").hidden = !W.cursor;
  updateBulk();
}

function picked() { return [...document.querySelectorAll("#search-results .bulk-pick:checked")].map((b) => b.value); }
function updateBulk() { $("bulk-ack").disabled = picked().length === 0; }

async function bulkAck() {
  const ids = picked();
  if (!ids.length) return;
  try {
    const r = await api("/v1/alerts/acknowledge", { method: "POST", body: JSON.stringify({ alert_ids: ids }) });
    const refused = r.results.filter((x) => !x.ok).map((x) => `${x.alert_id}: ${x.error}`);
    $("bulk-result").textContent = `${S.lang === "ko" ? "확인" : "acknowledged"} ${r.acknowledged}` + (refused.length ? ` · ${refused.join("; ")}` : "");
    await runSearch(false);
  } catch (e) { $("search-error").textContent = e.message; }
}

// A report needs the session's token: fetched here, opened as a page (print) or saved (CSV).
async function openReport(id, form) {
  const path = `/v1/alerts/${encodeURIComponent(id)}/report${form === "csv" ? ".csv" : ""}`;
  const r = await fetch(path, { headers: { Authorization: "Bearer " + S.token } });
  if (!r.ok) { $("search-error").textContent = r.statusText; return; }
  const url = URL.createObjectURL(await r.blob());
  if (form === "csv") {
    const link = document.createElement("a");
    link.href = url; link.download = `incident-${id}.csv`; link.click();
  } else window.open(url, "_blank", "noopener");
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// ---------------------------------------------------------------- shift hand-over
async function loadHandover() {
  $("handover-error").textContent = "";
  const hours = Math.min(744, Math.max(1, Number($("handover-hours").value) || 8));
  const until = new Date();
  const since = new Date(until.getTime() - hours * 3600 * 1000);
  let h;
  try { h = await api(`/v1/handover?since=${encodeURIComponent(since.toISOString())}&until=${encodeURIComponent(until.toISOString())}`); }
  catch (e) { $("handover-error").textContent = e.message; return; }
  $("handover-range").textContent = `${fmtDateTime(h.since)} – ${fmtDateTime(h.until)}`;
  $("handover-open-total").textContent = `(${h.open_total})`;
  $("handover-open").replaceChildren(...h.open.map((a) => {
    const li = document.createElement("li");
    li.dataset.alertId = a.id; li.dataset.kind = a.kind; li.dataset.state = a.state;
    const open = document.createElement("button");
    open.type = "button"; open.className = "result-open";
    open.textContent = `${t(a.kind)} · ${t(a.state)} · ${fmtDateTime(a.created_at)}`;
    open.onclick = () => { closeView(); select(a.id); };
    const place = document.createElement("div"); place.className = "place"; place.textContent = placeText(a);
    li.append(open, place);
    return li;
  }));
  $("handover-raised").textContent = Object.entries(h.raised).map(([k, n]) => `${t(k)} ${n}`).join(" · ") || "—";
  $("handover-operators").replaceChildren(...h.operators.map((o) => {
    const sec = document.createElement("section");
    sec.className = "handover-operator"; sec.dataset.actor = o.actor;
    const h4 = document.createElement("h4");
    h4.textContent = `${o.actor.replace(/^operator:/, "")} — ` + Object.entries(o.counts).map(([k, n]) => `${t(k)} ${n}`).join(", ");
    const ol = document.createElement("ol");
    ol.append(...o.actions.map((x) => {
      const li = document.createElement("li");
      li.dataset.alertId = x.alert_id; li.dataset.action = x.action;
      const extra = Object.entries(x.details || {}).map(([k, v]) => `${k}=${v}`).join(" ");
      li.textContent = `${fmtTime(x.at)} ${t(x.action)} · ${t(x.kind)} · ${(S.lang === "ko" ? x.place_text_ko : x.place_text_en) || x.alert_id}${x.note ? " · " + x.note : ""}${extra ? " · " + extra : ""}`;
      return li;
    }));
    sec.append(h4, ol);
    return sec;
  }));
  if (!h.operators.length) $("handover-operators").textContent = S.lang === "ko" ? "처리 내역 없음" : "nothing done in this shift";
}

// ---------------------------------------------------------------- wiring
$("open-search").onclick = () => openView("search-view");
$("open-handover").onclick = () => openView("handover-view");
$("search-close").onclick = closeView;
$("handover-close").onclick = closeView;
$("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); $("bulk-result").textContent = ""; runSearch(false); });
$("search-more").onclick = () => runSearch(true);
$("bulk-ack").onclick = bulkAck;
$("handover-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadHandover(); });
$("handover-print").onclick = () => window.print();
// Keys: S opens the search, H the hand-over (not while typing); inside a view Enter in a field
// submits its form, Esc closes it and gives the focus back; the console's own single-key
// shortcuts (A acknowledge, ...) do not act behind an open view.
window.addEventListener("keydown", (ev) => {
  if ($("console-view").hidden || ev.ctrlKey || ev.altKey || ev.metaKey) return;
  const typing = ev.target instanceof HTMLInputElement && !["checkbox", "radio", "button", "submit"].includes(ev.target.type);
  if (W.view) {
    if (ev.key === "Escape") { ev.preventDefault(); closeView(); }
    else if (ev.key === "Enter" && typing && ev.target.form) { ev.preventDefault(); ev.target.form.requestSubmit(); }
    ev.stopImmediatePropagation(); // the console's shortcuts stay behind the view
    return;
  }
  if (typing || ev.target instanceof HTMLTextAreaElement || ev.target instanceof HTMLSelectElement || ev.repeat) return;
  const key = ev.key.toLowerCase();
  if (key === "s") openView("search-view");
  else if (key === "h") openView("handover-view");
  else return;
  ev.preventDefault(); ev.stopImmediatePropagation();
}, true);
