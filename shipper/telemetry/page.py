"""The status page served at `/`: one HTML document, no external assets (styles, script and charts inline).

It is rendered with the current /status document embedded, so it shows everything at once without a request
of its own (and reads in a browser with scripts off, minus the charts), then refreshes itself from `status`
every REFRESH_SECS. Charts are inline SVG drawn by the page's script: events/s in and out per sink and the
buffer's fill over the last 15 minutes. A token given as `?access_token=` is passed on as a bearer token.
"""

from __future__ import annotations

import html
from typing import Any

import orjson

from shipper.telemetry.status import HISTORY_SECS, STEP_SECS

REFRESH_SECS = 2

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .4em}h2{font-size:1.05em;margin:1.2em 0 .4em}
.badge{display:inline-block;padding:.15em .6em;border-radius:.8em;color:#fff;font-weight:600}
.ok{background:#2e7d32}.bad{background:#c62828}.warn{background:#ef6c00}.muted{color:#777}
table{border-collapse:collapse;background:#fff;min-width:40em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-variant-numeric:tabular-nums}
th{background:#f0f0f0}td.num{text-align:right}.err{color:#c62828;max-width:30em;overflow-wrap:anywhere}
.charts{display:flex;flex-wrap:wrap;gap:1em}.chart{background:#fff;border:1px solid #ddd;padding:.4em}
.chart svg{display:block}.legend span{margin-right:1em}.in{color:#1565c0}.out{color:#2e7d32}.fill{color:#6a1b9a}
"""

_JS = r"""
const REFRESH = %(refresh)d * 1000;
const HISTORY_POINTS = %(points)d;
const token = new URLSearchParams(location.search).get("access_token");
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
const DASH = "\u2013";
const num = v => v === null || v === undefined ? DASH : Number(v).toLocaleString("en");
const secs = v => v === null || v === undefined ? DASH : (v < 1 ? "0" : v < 120 ? v.toFixed(0) + " s"
  : v < 7200 ? (v / 60).toFixed(0) + " min" : (v / 3600).toFixed(1) + " h");
const cls = st => ({up: "ok", retrying: "warn", starting: "warn", failing: "bad"}[st] || "muted");

function chart(title, series, maxY, unit) {
  const W = 360, H = 110, P = 28;
  const n = Math.max(2, HISTORY_POINTS, ...series.map(s => s.values.length));  // the x axis is always 15 min
  let top = maxY || Math.max(1, ...series.flatMap(s => s.values));
  const x = i => P + (W - P - 4) * (n <= 1 ? 1 : i / (n - 1));
  const y = v => H - 16 - (H - 26) * Math.min(v, top) / top;
  let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img"`
    + ` aria-label="${esc(title)}" data-points="${n}">`
    + `<line x1="${P}" y1="${y(0)}" x2="${W - 4}" y2="${y(0)}" stroke="#999"/>`
    + `<line x1="${P}" y1="${y(top)}" x2="${W - 4}" y2="${y(top)}" stroke="#eee"/>`
    + `<text x="2" y="${y(top) + 4}" font-size="10" fill="#777">`
    + `${esc(unit === "%%" ? "100%%" : num(Math.round(top)))}</text>`
    + `<text x="2" y="${y(0) + 4}" font-size="10" fill="#777">0</text>`
    + `<text x="${P}" y="${H - 2}" font-size="10" fill="#777">-15 min</text>`
    + `<text x="${W - 30}" y="${H - 2}" font-size="10" fill="#777">now</text>`;
  for (const s of series) {
    const pts = s.values.map((v, i) => `${x(i + n - s.values.length).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    if (pts) svg += `<polyline class="series" data-series="${esc(s.name)}" fill="none" stroke="${s.color}"`
      + ` stroke-width="1.6"${s.dash ? ' stroke-dasharray="4 3"' : ""} points="${pts}"/>`;
  }
  svg += "</svg>";
  const last = s => s.values.length ? s.values[s.values.length - 1] : null;
  const legend = series.map(s => `<span style="color:${s.color}">&#9632; ${esc(s.name)} `
    + `<b class="now">${num(last(s) === null ? null : Math.round(last(s)))}${unit === "%%" ? "%%" : "/s"}</b></span>`)
    .join("");
  return `<div class="chart"><div>${esc(title)}</div>${svg}<div class="legend">${legend}</div></div>`;
}

function render(st) {
  const h = document.getElementById("health");
  h.className = "badge " + (st.healthy ? "ok" : "bad");
  h.textContent = st.healthy ? "healthy" : "unhealthy";
  document.getElementById("problems").innerHTML = (st.problems || []).map(p => `<li>${esc(p)}</li>`).join("");
  document.getElementById("updated").textContent = st.time;
  document.getElementById("containers").innerHTML = st.containers.map(c =>
    `<tr class="container" data-name="${esc(c.name)}"><td>${esc(c.name)}</td><td>${esc(c.reader)}</td>`
    + `<td class="num">${num(c.bytes_behind)}</td><td class="num">${secs(c.seconds_behind)}</td>`
    + `<td class="err">${esc(c.last_error)}</td></tr>`).join("")
    || `<tr><td colspan="5" class="muted">no container is being read</td></tr>`;
  document.getElementById("sinks").innerHTML = Object.entries(st.sinks).map(([n, s]) =>
    `<tr class="sink" data-name="${esc(n)}"><td>${esc(n)}</td><td>${esc(s.type)}</td>`
    + `<td><span class="badge ${cls(s.state)}">${esc(s.state)}</span></td><td class="num">${num(s.in_flight)}</td>`
    + `<td class="num">${num(s.pending_events)}</td><td class="num">${num(s.events_per_sec)}</td>`
    + `<td>${esc(s.last_success || "never")}</td><td class="err">${esc(s.last_error)}</td></tr>`).join("");
  const b = st.buffer;
  document.getElementById("buffer").textContent = `${b.type}: ${num(b.events)} events, ${num(b.bytes)} bytes, `
    + `${(100 * b.fill).toFixed(1)}%% full` + (b.reading_paused ? ` — reading paused (${b.pause_reason})` : "");
  const d = st.docker;
  document.getElementById("docker").innerHTML = [
    ["answering", d.up === undefined ? d.discovery : d.up ? "yes" : "NO"],
    ["ping", d.ping_ms == null ? DASH : d.ping_ms + " ms"],
    ["version", `${esc(d.version)} (API ${esc(d.api_version)})`], ["discovery", d.discovery],
    ["events stream", d.events_connected ? "connected" : "disconnected"],
    ["last event", d.secs_since_last_event == null ? DASH : secs(d.secs_since_last_event) + " ago"],
    ["restarts seen", num(d.restarts_seen)], ["reconnects", num(d.reconnects)],
    ["containers", Object.entries(d.containers || {}).map(([k, v]) => `${k} ${v}`).join(", ")],
    ["json-file logs", num(d.json_log_bytes) + " bytes"],
    ["free on their filesystem", num(d.log_fs_free_bytes) + " bytes"],
  ].map(([k, v]) => `<tr><th>${k}</th><td>${v}</td></tr>`).join("");
  const drops = Object.entries(st.drops).flatMap(([kind, m]) => Object.entries(m).map(([r, v]) =>
    `<tr class="drop"><td>${esc(kind)}</td><td>${esc(r)}</td><td class="num">${num(v)}</td></tr>`)).join("");
  document.getElementById("drops").innerHTML = drops
    || `<tr><td colspan="3" class="muted">nothing dropped, cut or skipped</td></tr>`;
  const hist = st.history, charts = [];
  const colors = ["#2e7d32", "#ef6c00", "#00838f", "#ad1457"];
  Object.keys(hist.out).forEach((n, i) => charts.push(chart(`events/s, sink ${n}`, [
    {name: "in", values: hist.in, color: "#1565c0", dash: true},
    {name: "out", values: hist.out[n], color: colors[i %% 4]}])));
  const fill = hist.buffer_fill.map(v => 100 * v);
  charts.push(chart("buffer fill", [{name: "fill", values: fill, color: "#6a1b9a"}], 100, "%%"));
  document.getElementById("charts").innerHTML = charts.join("");
}

async function refresh() {
  try {
    const r = await fetch("status", {headers: token ? {Authorization: "Bearer " + token} : {}, cache: "no-store"});
    if (r.ok) { render(await r.json()); document.getElementById("stale").textContent = ""; }
    else document.getElementById("stale").textContent = `(status answered HTTP ${r.status})`;
  } catch (e) { document.getElementById("stale").textContent = "(shipper is not answering)"; }
}
render(JSON.parse(document.getElementById("initial").textContent));
setInterval(refresh, REFRESH);
"""

_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shipper on {host}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{css}</style></head>
<body>
<h1>shipper {version} on {host} <span id="health" class="badge {health_cls}">{health}</span></h1>
<div class="muted">updated <span id="updated">{time}</span> <span id="stale"></span></div>
<ul id="problems"></ul>
<h2>Containers</h2>
<table><thead><tr><th>container</th><th>reader</th><th>bytes behind</th><th>behind</th><th>last error</th></tr></thead>
<tbody id="containers"></tbody></table>
<h2>Sinks</h2>
<table><thead><tr><th>sink</th><th>type</th><th>state</th><th>in flight</th><th>pending events</th><th>events/s</th>
<th>last success</th><th>last error</th></tr></thead><tbody id="sinks"></tbody></table>
<h2>Last 15 minutes</h2><div id="charts" class="charts"></div>
<h2>Buffer</h2><div id="buffer"></div>
<h2>Dropped, cut, skipped</h2>
<table><thead><tr><th>what</th><th>reason</th><th>events</th></tr></thead><tbody id="drops"></tbody></table>
<h2>Docker daemon</h2><table><tbody id="docker"></tbody></table>
<script id="initial" type="application/json">{initial}</script>
<script>{js}</script>
</body></html>
"""


def render_page(status: dict[str, Any], host: str) -> str:
    initial = orjson.dumps(status).decode().replace("</", "<\\/")
    healthy = bool(status.get("healthy"))
    js = _JS % {"refresh": REFRESH_SECS, "points": HISTORY_SECS // STEP_SECS}
    return _HTML.format(css=_CSS, js=js, initial=initial, host=html.escape(host),
                        version=html.escape(str(status.get("version", ""))), time=html.escape(str(status.get("time"))),
                        health="healthy" if healthy else "unhealthy", health_cls="ok" if healthy else "bad")
