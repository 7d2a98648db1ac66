// What every page shares: the JSON API with the user's key, messages, number and time formats,
// and uPlot charts of time series with min/max bands and event markers.
"use strict";

const KEY = "tandem-api-key";

function apiKey() { return localStorage.getItem(KEY) || ""; }

document.getElementById("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  localStorage.setItem(KEY, document.getElementById("key").value.trim());
  location.reload();
});

function showMessage(text) {
  const p = document.getElementById("message");
  p.textContent = text;
  p.hidden = !text;
}

// GET or POST JSON from the API; throws an Error with the service's `detail` on a non-2xx.
async function api(path, body) {
  const headers = { accept: "application/json" };
  if (apiKey()) headers.authorization = "Bearer " + apiKey();
  const init = { headers };
  if (body !== undefined) {
    init.method = "POST";
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => null);
  if (response.status === 401) showMessage("This service needs an API key with the read scope: enter one above.");
  if (!response.ok) throw new Error((data && data.detail) || `${response.status} ${response.statusText}`);
  return { data, headers: response.headers };
}

// Data drawn: body[data-loaded] says when (tests wait for it), and `data-first-ms` how long the
// first drawing took from the start of navigation (what the page-time benchmark reads).
function markLoaded() {
  const body = document.body.dataset;
  if (!body.firstMs) body.firstMs = performance.now().toFixed(1);
  body.loaded = String(Date.now());
}

function fmt(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  const a = Math.abs(x);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return x.toExponential(2);
  return Number(x.toPrecision(digits)).toString();
}

function fmtTime(ts) {
  if (ts === null || ts === undefined) return "–";
  return new Date(ts * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function fmtAge(seconds) {
  if (seconds < 1) return `${fmt(seconds, 2)} s`;
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} days`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

const COLORS = { observed: "#1f77b4", predicted: "#d62728", band: "rgba(31,119,180,0.15)",
  residual: "#555", guess: "#2ca02c", bound: "#999", start: "#ff7f0e", fired: "#d62728" };

// Vertical markers: [{ts, color, dash}] drawn across the plot after each redraw; the chart's
// `markersDrawn` lists those in view ({ts, began: dashed}).
function markersPlugin(getMarkers) {
  return { hooks: { draw: [(u) => {
    const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
    ctx.save();
    ctx.lineWidth = 1.5 * devicePixelRatio;
    u.markersDrawn = [];
    for (const m of getMarkers()) {
      if (m.ts === null || m.ts < u.scales.x.min || m.ts > u.scales.x.max) continue;
      u.markersDrawn.push({ ts: m.ts, began: Boolean(m.dash) });
      const x = Math.round(u.valToPos(m.ts, "x", true));
      ctx.strokeStyle = m.color;
      ctx.setLineDash(m.dash ? [5 * devicePixelRatio, 4 * devicePixelRatio] : []);
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
    }
    ctx.restore();
  }] } };
}

// A time-series chart in `container`: series [{label, color, dash?, fill?}] over data
// [ts, ...ys]; `bands` pairs series indices [upper, lower] to fill between; `onZoom(min, max)`
// runs when the user drags a range, `onReset()` on double-click.
function timeChart(container, title, series, data, opts = {}) {
  const width = Math.max(container.clientWidth || 600, 300);
  const chart = new uPlot({
    title, width, height: opts.height || 220,
    scales: { x: { time: true }, ...(opts.yRange ? { y: { range: () => opts.yRange } } : {}) },
    series: [{}, ...series.map((s) => ({
      label: s.label, stroke: s.color, width: s.width || 1.5, dash: s.dash, fill: s.fill,
      points: { show: s.points || false }, spanGaps: false,
    }))],
    bands: (opts.bands || []).map(([a, b]) => ({ series: [a, b], fill: COLORS.band })),
    cursor: { drag: { x: true, y: false, setScale: false } },
    plugins: opts.markers ? [markersPlugin(opts.markers)] : [],
    hooks: {
      setSelect: [(u) => {
        if (u.select.width < 3 || !opts.onZoom) return;
        const min = u.posToVal(u.select.left, "x"), max = u.posToVal(u.select.left + u.select.width, "x");
        u.setSelect({ width: 0, height: 0 }, false);
        opts.onZoom(min, max);
      }],
    },
  }, data, container);
  if (opts.onReset) chart.over.addEventListener("dblclick", () => opts.onReset());
  return chart;
}
