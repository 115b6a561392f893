// ripcord's dashboard: plain DOM, no framework, nothing fetched from elsewhere.
// Every text from the server goes in through textContent (never innerHTML).
"use strict";

// Set once per page load: a test reads it to tell an update from a reload.
window.ripcordPageId = Math.random().toString(36).slice(2);

const body = document.body;
const main = document.getElementById("main");

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function fmtTime(ms) {
  if (!ms) return "–";
  const d = new Date(ms);
  return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function ago(ms) {
  if (!ms) return "";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function releaseText(r) {
  return r ? r.version + " (#" + r.id + ")" : "none";
}

function stateBadge(state) {
  return el("span", { class: "state " + state.replace(" ", "-"), id: "state", text: state });
}

function verdictClass(v) {
  if (v.startsWith("fired")) return "v-fired";
  if (v.startsWith("ok")) return "v-ok";
  return "v-nodata";
}

function rulesList(rules) {
  const ul = el("ul", { class: "rules" });
  const names = Object.keys(rules || {});
  if (names.length === 0) ul.append(el("li", { class: "muted", text: "no verdict yet" }));
  for (const name of names) {
    const v = rules[name];
    ul.append(el("li", { "data-rule": name }, el("b", { text: name + " " }), el("span", { class: verdictClass(v), text: v })));
  }
  return ul;
}

function live(on) {
  const dot = document.getElementById("live");
  dot.classList.toggle("on", on);
  dot.title = on ? "live: updates every second" : "not connected";
}

function stream(url, event, onData) {
  const es = new EventSource(url);
  es.addEventListener(event, (m) => {
    live(true);
    onData(JSON.parse(m.data));
  });
  es.onerror = () => live(false);
  return es;
}

async function getJSON(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  const v = await r.json();
  if (!r.ok) throw new Error(v.error || r.statusText);
  return v;
}

// ---- the chart: 5xx ratio, p95 and request rate, one point a second ----------------

const PANELS = [
  { key: "ratio", label: "5xx ratio", color: "#c0392b", fmt: (v) => (v * 100).toFixed(1) + "%" },
  { key: "p95", label: "p95", color: "#2b6cb0", fmt: (v) => v.toFixed(1) + " ms" },
  { key: "rate", label: "requests/s", color: "#1f8a4c", fmt: (v) => v.toFixed(0) },
];
const MARK_COLORS = { deploy: "#2b6cb0", trigger: "#c0392b", switch: "#b7791f", verified: "#1f8a4c", failed: "#000", frozen: "#5a3fb0" };

function pointValues(p) {
  return {
    ratio: p.requests > 0 ? p.errors / p.requests : null,
    p95: p.p95_ms === null || p.p95_ms === undefined ? null : p.p95_ms,
    rate: p.requests,
  };
}

// Draws into `holder` the points (sorted by t_ms) between from and to, and the markers.
function drawChart(holder, points, markers, from, to, height) {
  const W = 1000, H = height || 330, left = 70, right = 10, gap = 14;
  const ph = (H - gap * (PANELS.length + 1)) / PANELS.length;
  const s = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "chart", preserveAspectRatio: "none", width: "100%" });
  const x = (t) => left + ((t - from) / (to - from)) * (W - left - right);
  let maxRatio = 0;
  PANELS.forEach((panel, i) => {
    const top = gap + i * (ph + gap);
    const vals = points.map((p) => [p.t_ms + 500, pointValues(p)[panel.key]]).filter((v) => v[1] !== null && v[0] >= from);
    let max = Math.max(0, ...vals.map((v) => v[1]));
    if (panel.key === "ratio") { maxRatio = max; max = Math.max(max, 0.05); }
    if (max === 0) max = 1;
    const y = (v) => top + ph - (v / max) * ph;
    s.append(svg("rect", { x: left, y: top, width: W - left - right, height: ph, fill: "#fafbfc", stroke: "#dde1e6" }));
    const label = svg("text", { x: 4, y: top + 12, "font-size": 12, fill: "#66707c" });
    label.textContent = panel.label;
    s.append(label);
    const top_ = svg("text", { x: 4, y: top + 26, "font-size": 11, fill: "#66707c" });
    top_.textContent = panel.fmt(max);
    s.append(top_);
    // A gap in the data (a second with no requests) breaks the line.
    let d = "", prev = null;
    for (const [t, v] of vals) {
      d += (prev !== null && t - prev <= 1500 ? "L" : "M") + x(t).toFixed(1) + " " + y(v).toFixed(1) + " ";
      prev = t;
    }
    if (d) s.append(svg("path", { d, fill: "none", stroke: panel.color, "stroke-width": 1.6, "data-series": panel.key }));
  });
  let row = 0;
  for (const m of markers) {
    if (m.ts_ms < from || m.ts_ms > to) continue;
    row = (row + 1) % 3;
    const mx = x(m.ts_ms);
    const line = svg("line", { x1: mx, x2: mx, y1: gap, y2: H - gap, stroke: MARK_COLORS[m.marker] || "#444", "stroke-dasharray": "4 3", "data-marker": m.marker });
    const title = svg("title", {});
    title.textContent = m.marker + " " + fmtTime(m.ts_ms) + ": " + m.message;
    line.append(title);
    s.append(line);
    const t = svg("text", { x: mx + 3, y: gap + 10 + row * 11, "font-size": 10, fill: MARK_COLORS[m.marker] || "#444" });
    t.textContent = m.marker;
    s.append(t);
  }
  holder.replaceChildren(s);
  holder.dataset.points = String(points.filter((p) => p.t_ms >= from).length);
  holder.dataset.requests = String(points.filter((p) => p.t_ms >= from).reduce((a, p) => a + p.requests, 0));
  holder.dataset.maxRatio = maxRatio.toFixed(4);
  holder.dataset.markers = String(markers.filter((m) => m.ts_ms >= from && m.ts_ms <= to).length);
  holder.dataset.drawnAt = String(Date.now());
}

function spark(points, spanSecs) {
  const W = 300, H = 40;
  const s = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "spark", preserveAspectRatio: "none" });
  const now = Date.now(), from = now - spanSecs * 1000;
  const x = (t) => ((t - from) / (now - from)) * W;
  const maxRate = Math.max(1, ...points.map((p) => p.requests));
  let rate = "", bad = "";
  for (const p of points) {
    rate += (rate ? "L" : "M") + x(p.t_ms).toFixed(1) + " " + (H - (p.requests / maxRate) * (H - 4)).toFixed(1) + " ";
    const r = p.requests ? p.errors / p.requests : 0;
    bad += (bad ? "L" : "M") + x(p.t_ms).toFixed(1) + " " + (H - r * (H - 4)).toFixed(1) + " ";
  }
  s.append(svg("path", { d: rate || "M0 " + H, fill: "none", stroke: "#1f8a4c", "stroke-width": 1.2 }));
  s.append(svg("path", { d: bad || "M0 " + H, fill: "none", stroke: "#c0392b", "stroke-width": 1.2 }));
  return s;
}

// ---- overview ----------------------------------------------------------------------

function overviewCard(svc) {
  const card = el("section", { class: "card", "data-service": svc.name });
  card.append(
    el("h2", {}, el("a", { href: "/services/" + encodeURIComponent(svc.name), text: svc.name }), " ", stateBadge(svc.state)),
    el("div", { class: "why", text: svc.why }),
    el("dl", { class: "kv" },
      el("dt", { text: "active" }), el("dd", { class: "active", text: releaseText(svc.active) }),
      el("dt", { text: "previous" }), el("dd", { class: "previous", text: releaseText(svc.previous) }),
      el("dt", { text: "warm" }), el("dd", { class: "warm", text: svc.warm.length ? svc.warm.map((w) => w.version + " in " + w.slot).join(", ") : "none" }),
      el("dt", { text: "traffic" }), el("dd", { text: svc.entry })),
    rulesList(svc.rules),
    spark(svc.spark || [], 120),
  );
  if (svc.open_incident) {
    const i = svc.open_incident;
    card.append(el("p", {}, "open incident ", el("a", { href: "/incidents/" + i.id, text: "#" + i.id }), ": " + i.summary));
  }
  return card;
}

function renderOverview(v) {
  const cards = el("div", { class: "cards", id: "services" });
  for (const s of v.services) cards.append(overviewCard(s));
  main.replaceChildren(el("h1", { text: "Services" }), cards);
}

async function overviewPage() {
  try {
    renderOverview(await getJSON("/api/overview"));
  } catch (e) {
    main.replaceChildren(el("p", { class: "error", text: String(e) }));
  }
  stream("/api/stream", "overview", renderOverview);
}

// ---- one service -------------------------------------------------------------------

const TOKEN_KEY = "ripcord-token";

// The last `ripcord drill`: outcome, when, total against the budget.
function drillText(d) {
  if (!d) return "never: `ripcord drill` rehearses the rollback";
  return d.outcome + " " + fmtTime(d.finished_at_ms) + ", " + d.total_ms + " ms of a " + d.budget_ms + " ms budget" +
    (d.within_budget ? "" : " (OVER)") + (d.error ? ": " + d.error : "");
}

function servicePage(name) {
  const state = { points: new Map(), events: [], spanSecs: 900 };
  const head = el("div");
  const chart = el("div", { id: "chart" });
  const eventsList = el("ul", { class: "events", id: "events" });
  const incidents = el("ul", { id: "incidents-list" });
  const releases = el("tbody");
  const rules = el("div", { id: "rules" });
  const result = el("div", { id: "action-result" });
  const reason = el("input", { id: "reason", placeholder: "reason (required: it goes to the ledger)" });
  const token = el("input", { id: "token", type: "password", placeholder: "token (ripcord dashboard)", autocomplete: "off" });
  token.value = sessionStorage.getItem(TOKEN_KEY) || "";

  async function act(action) {
    result.className = "";
    result.textContent = action + "…";
    const headers = { "Content-Type": "application/json" };
    const t = token.value.trim();
    if (t) {
      headers.Authorization = "Bearer " + t;
      sessionStorage.setItem(TOKEN_KEY, t);
    }
    try {
      const r = await fetch("/api/services/" + encodeURIComponent(name) + "/" + action, {
        method: "POST", headers, body: JSON.stringify({ reason: reason.value }), credentials: "omit",
      });
      const v = await r.json();
      if (!r.ok) throw new Error(v.error || r.statusText);
      result.className = "done";
      const res = v.result || {};
      result.textContent = "✓ " + action + " done" + (res.active ? ": " + res.active.version + " is active" : "");
    } catch (e) {
      result.className = "error";
      result.textContent = String(e.message || e);
    }
  }

  const button = (action, label, cls) => el("button", { "data-action": action, class: cls, onclick: () => act(action), text: label });

  main.replaceChildren(
    el("p", { class: "crumbs" }, el("a", { href: "/", text: "overview" }), " › " + name),
    head,
    el("div", { class: "panel" },
      el("div", { class: "legend" },
        el("span", {}, el("i", { style: "background:#c0392b" }), "5xx ratio"),
        el("span", {}, el("i", { style: "background:#2b6cb0" }), "p95"),
        el("span", {}, el("i", { style: "background:#1f8a4c" }), "requests/s"),
        el("span", { class: "muted", text: "last 15 minutes, one point a second; dashed: deploy, trigger, switch, verified" })),
      chart),
    el("div", { class: "panel" }, el("h2", { text: "Triggers" }), rules),
    el("div", { class: "panel" },
      el("h2", { text: "Actions" }),
      el("div", { class: "actions" }, reason, token,
        button("rollback", "Roll back", "danger"), button("freeze", "Freeze"), button("unfreeze", "Unfreeze"), button("ack", "Ack")),
      result),
    el("div", { class: "panel" }, el("h2", { text: "Incidents" }), incidents),
    el("div", { class: "panel" }, el("h2", { text: "Releases" }),
      el("table", {}, el("thead", {}, el("tr", {}, ...["release", "version", "status", "activated", "migration head"].map((h) => el("th", { text: h })))), releases)),
    el("div", { class: "panel" }, el("h2", { text: "Events" }), eventsList),
  );

  function renderHead(v) {
    head.replaceChildren(
      el("h1", {}, name + " ", stateBadge(v.state)),
      el("div", { class: "why", text: v.why }),
      el("dl", { class: "kv" },
        el("dt", { text: "active" }), el("dd", { id: "active", text: releaseText(v.active) }),
        el("dt", { text: "previous" }), el("dd", { id: "previous", text: releaseText(v.previous) }),
        el("dt", { text: "warm" }), el("dd", { id: "warm", text: v.warm.length ? v.warm.map((w) => w.version + " in " + w.slot).join(", ") : "none" }),
        el("dt", { text: "migration head" }), el("dd", { id: "migration-head", text: (v.active && v.active.migration_head) || "none recorded" }),
        el("dt", { text: "last drill" }), el("dd", { id: "last-drill", text: drillText(v.last_drill) }),
        el("dt", { text: "traffic" }), el("dd", { text: v.entry })),
    );
    rules.replaceChildren(rulesList(v.rules));
  }

  // Lists are redrawn only when they change: a link stays the same element while a
  // person (or a test) reaches for it.
  const drawn = {};
  function changed(key, value) {
    const s = JSON.stringify(value);
    if (drawn[key] === s) return false;
    drawn[key] = s;
    return true;
  }

  function renderIncidents(list) {
    if (!changed("incidents", list)) return;
    incidents.replaceChildren(...(list.length ? list.map((i) =>
      el("li", { "data-incident": i.id }, el("a", { href: "/incidents/" + i.id, text: "#" + i.id }), " " + i.status + " · " + i.rule + " · " + fmtTime(i.opened_at_ms) + ": " + i.summary))
      : [el("li", { class: "muted", text: "none" })]));
  }

  function renderReleases(list) {
    if (!changed("releases", list)) return;
    releases.replaceChildren(...list.map((r) => el("tr", { "data-release": r.id },
      el("td", { text: "#" + r.id }), el("td", { text: r.version }), el("td", { text: r.status + (r.status_reason ? ": " + r.status_reason : "") }),
      el("td", { text: fmtTime(r.activated_at_ms) }), el("td", { text: r.migration_head || "–" }))));
  }

  function renderEvents() {
    eventsList.replaceChildren(...state.events.slice(-200).reverse().map((e) =>
      el("li", { "data-kind": e.kind }, el("time", { text: fmtTime(e.ts_ms) + " " }), el("b", { text: e.kind + " " }), e.message)));
  }

  function redraw() {
    const now = Date.now();
    const pts = [...state.points.values()].sort((a, b) => a.t_ms - b.t_ms);
    const markers = state.events.filter((e) => e.marker);
    // The last 15 minutes at most; a younger history fills the width (a minute at least).
    const oldest = now - state.spanSecs * 1000;
    const first = Math.min(pts.length ? pts[0].t_ms : now, ...markers.map((m) => m.ts_ms).filter((t) => t >= oldest));
    const from = Math.max(oldest, Math.min(first - 5000, now - 60000));
    drawChart(chart, pts, markers, from, now);
  }

  function addPoints(points) {
    for (const p of points) state.points.set(p.t_ms, p);
    const from = Date.now() - state.spanSecs * 1000 - 2000;
    for (const t of state.points.keys()) if (t < from) state.points.delete(t);
  }

  getJSON("/api/services/" + encodeURIComponent(name)).then((v) => {
    state.spanSecs = v.chart_secs;
    addPoints(v.points);
    state.events = v.events;
    renderHead(v);
    renderIncidents(v.incidents);
    renderEvents();
    renderReleases(v.releases);
    redraw();
    stream("/api/services/" + encodeURIComponent(name) + "/stream", "tick", (t) => {
      if (t.error) return;
      addPoints(t.points);
      if (t.events.length) {
        state.events = state.events.concat(t.events);
        renderEvents();
      }
      renderHead(t);
      renderIncidents(t.incidents);
      renderReleases(t.releases);
      redraw();
    });
  }).catch((e) => main.replaceChildren(el("p", { class: "error", text: String(e) })));
}

// ---- incidents ---------------------------------------------------------------------

async function incidentsPage() {
  const render = (v) => {
    const rows = v.incidents.map((i) => el("tr", { "data-incident": i.id },
      el("td", {}, el("a", { href: "/incidents/" + i.id, text: "#" + i.id })),
      el("td", {}, el("a", { href: "/services/" + encodeURIComponent(i.service), text: i.service })),
      el("td", { text: i.status }), el("td", { text: i.rule }), el("td", { text: fmtTime(i.opened_at_ms) + " (" + ago(i.opened_at_ms) + ")" }),
      el("td", { text: i.summary })));
    main.replaceChildren(el("h1", { text: "Incidents" }),
      el("div", { class: "panel" }, el("table", { id: "incidents-table" },
        el("thead", {}, el("tr", {}, ...["", "service", "status", "rule", "opened", "summary"].map((h) => el("th", { text: h })))),
        el("tbody", {}, ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6, class: "muted", text: "no incidents" }))])))));
  };
  const load = () => getJSON("/api/incidents").then((v) => { live(true); render(v); }).catch(() => live(false));
  await load();
  setInterval(load, 5000);
}

switch (body.dataset.page) {
  case "overview": overviewPage(); break;
  case "service": servicePage(body.dataset.subject); break;
  case "incidents": incidentsPage(); break;
  default: break;
}
