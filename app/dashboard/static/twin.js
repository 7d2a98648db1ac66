// One twin's page: every plot is drawn from the JSON API (GET /twins/{id}, .../series,
// .../versions, .../parameters, .../drift; POST .../predict) and follows new data live.
"use strict";

const LIVE_MS = 2000;
const VERSIONS = 2000; // newest versions drawn in the parameter plots
const twinId = Number(document.getElementById("twin").dataset.twinId);
const base = `/twins/${twinId}`;
// What the page shows now (charts, the series and the queries behind them), exposed as
// window.tandem for tests and for the curious.
const initial = new URLSearchParams(location.search).get("range"); // seconds; 0: all
const state = { twin: null, range: initial === null ? 3600 : Number(initial), zoom: null, charts: {}, series: {}, queries: {}, events: [], seen: null };
window.tandem = state;

function span() {
  if (state.zoom) return state.zoom;
  const last = state.twin.last_ts;
  if (!state.range || last === null) return { min: null, max: null };
  return { min: last - state.range, max: last };
}

function chartWidth(container) { return Math.max(container.clientWidth || 800, 300); }

function upsert(key, container, title, series, data, opts = {}) {
  const chart = state.charts[key];
  if (chart && chart.series.length === series.length + 1) {
    chart.setData(data);
    return chart;
  }
  if (chart) chart.destroy();
  const box = document.getElementById(`plot-${key}`) || container.appendChild(el("div", { id: `plot-${key}`, class: "plot" }));
  state.charts[key] = timeChart(box, title, series, data, opts);
  return state.charts[key];
}

const zoomOpts = {
  onZoom: (min, max) => { state.zoom = { min, max }; refresh(true); },
  onReset: () => { state.zoom = null; refresh(true); },
};

function renderStatus(t) {
  document.getElementById("twin-name").textContent = t.name;
  document.title = `${t.name} · Tandem`;
  const lag = t.calibration_lag;
  const learner = (t.spec.learner && t.spec.learner.method) || "default";
  const items = [
    ["kind", t.spec.model.kind], ["learner", learner], ["status", t.status || (t.version ? "ok" : "new")],
    ["version", t.version], ["observations", t.last_seq], ["newest", fmtTime(t.last_ts)],
    ["calibration lag", lag.observations ? `${lag.observations} obs, ${fmtAge(lag.seconds)}` : "none"],
  ];
  if (t.error) items.push(["error", t.error]);
  document.getElementById("status").replaceChildren(
    ...items.map(([k, v]) => el("span", { class: "item" }, el("b", {}, k + " "), String(v))));
}

// Each output's series over span s, at one point per pixel of the plots' width.
function fetchSeries(t, s) {
  const q = new URLSearchParams({ points: chartWidth(document.getElementById("outputs")) });
  if (s.min !== null) { q.set("start", s.min); q.set("end", s.max); }
  return Promise.all(t.spec.outputs.map((name) => {
    state.queries[name] = `${base}/series?${q}&output=${encodeURIComponent(name)}`;
    return api(state.queries[name]).then((r) => r.data);
  }));
}

function drawSeries(all) {
  const outputs = document.getElementById("outputs"), residuals = document.getElementById("residuals");
  all.forEach((d) => {
    state.series[d.output] = d;
    const o = d.observed, p = d.predicted, r = d.residual, g = d.first_guess;
    upsert(`out-${d.output}`, outputs, d.output, [
      { label: "observed", color: COLORS.observed }, { label: "observed max", color: "transparent" },
      { label: "observed min", color: "transparent" }, { label: "predicted", color: COLORS.predicted },
      { label: "first guess", color: COLORS.guess, dash: [6, 4] },
    ], [d.ts, o.mean, o.max, o.min, p.mean, g.mean], { bands: [[2, 3]], ...zoomOpts });
    upsert(`res-${d.output}`, residuals, `residual of ${d.output}`, [
      { label: "residual", color: COLORS.residual }, { label: "residual max", color: "transparent" },
      { label: "residual min", color: "transparent" },
    ], [d.ts, r.mean, r.max, r.min], {
      bands: [[2, 3]], ...zoomOpts, height: 160,
      markers: () => state.events.filter((e) => e.output === d.output).flatMap((e) => [
        { ts: e.start_ts, color: COLORS.start, dash: true }, { ts: e.ts, color: COLORS.fired }]),
    });
  });
  const label = all.length && all[0].ts.length
    ? `${fmtTime(all[0].ts[0])} – ${fmtTime(all[0].ts[all[0].ts.length - 1])}, ${fmt(all[0].bucket_seconds, 3)} s per point`
    : "no observations in this range";
  document.getElementById("range-label").textContent = label;
}

function drawParameters(s, versions, current) {
  const rows = versions.filter((v) => v.watermark_ts !== null &&
    (s.min === null || (v.watermark_ts >= s.min && v.watermark_ts <= s.max))).reverse();
  const box = document.getElementById("parameters");
  const ts = rows.map((v) => v.watermark_ts);
  for (const name of Object.keys(current.parameters)) {
    const bound = current.bounds[name];
    const values = rows.map((v) => v.parameters[name] ?? null);
    const series = [{ label: name, color: COLORS.observed, points: rows.length < 50 }];
    const data = [ts, values];
    if (bound) {
      series.push({ label: "lower bound", color: COLORS.bound, dash: [4, 4] }, { label: "upper bound", color: COLORS.bound, dash: [4, 4] });
      data.push(ts.map(() => bound[0]), ts.map(() => bound[1]));
    }
    const title = `${name} = ${fmt(current.parameters[name])}` + (bound ? `  (bounds ${fmt(bound[0])} to ${fmt(bound[1])})` : "");
    upsert(`par-${name}`, box, title, series, data, { ...zoomOpts, height: 160, yRange: valueRange(values, bound) });
  }
}

// The y range of a parameter plot: its values with a margin, stretched to a bound only when
// the bound is near, so that a wide bound does not flatten the trajectory.
function valueRange(values, bound) {
  const finite = values.filter((v) => v !== null && Number.isFinite(v));
  if (!finite.length) return bound ? [bound[0], bound[1]] : [0, 1];
  let lo = Math.min(...finite), hi = Math.max(...finite);
  const pad = Math.max((hi - lo) * 0.1, Math.abs(hi) * 0.02, 1e-12);
  lo -= pad; hi += pad;
  if (bound && bound[0] > lo - 3 * pad) lo = Math.min(lo, bound[0] - pad / 2);
  if (bound && bound[1] < hi + 3 * pad) hi = Math.max(hi, bound[1] + pad / 2);
  return [lo, hi];
}

function table(head, rows) {
  return el("table", { class: "grid" }, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c))))));
}

function drawDrift(d) {
  state.events = d.events;
  const stats = ["rmse", "mae", "bias", "ew_rmse"];
  const errors = Object.entries(d.outputs).map(([name, m]) => {
    const guess = m.first_guess || m.frozen || {};
    return [name, ...stats.flatMap((k) => [fmt(m.twin[k]), fmt(guess[k])])];
  });
  const params = Object.entries(d.parameters).map(([name, p]) =>
    [name, fmt(p.initial ?? p.first_guess), fmt(p.current), fmt(p.relative_change), fmt(p.recent_relative_change)]);
  const events = d.events.slice(0, 20).map((e) =>
    [e.output, e.detector, fmtTime(e.start_ts), String(e.start_seq ?? "–"), fmtTime(e.ts), String(e.seq), fmt(e.statistic)]);
  document.getElementById("drift").replaceChildren(
    table(["output", ...stats.flatMap((k) => [`${k} twin`, `${k} first guess`])], errors),
    table(["parameter", "baseline", "current", "relative change", "recent relative change"], params),
    events.length ? table(["output", "detector", "began", "began at seq", "detected", "detected at seq", "statistic"], events)
      : el("p", { class: "muted" }, "No drift events."));
}

// The reads that do not depend on the twin's row (its newest time, its outputs).
function reads() {
  return Promise.all([
    api(`${base}/drift?limit=50`), api(`${base}/versions?limit=${VERSIONS}`), api(`${base}/parameters`)]);
}

// Poll the twin; when asked to (force) or when it has new data, read the rest and redraw. A
// forced refresh (the first, a new range, a zoom) asks for everything at once. Of refreshes
// whose reads overlap, only the one that started reading last draws.
let latest = 0;
async function refresh(force = false) {
  try {
    const early = force ? reads() : null;
    early?.catch(() => {}); // awaited below; dropped if the twin's own read fails
    const { data: t } = await api(base);
    const seen = `${t.last_seq}/${t.version}`;
    state.twin = t;
    renderStatus(t);
    if (!force && (seen === state.seen || state.zoom)) return;
    state.seen = seen;
    const mine = ++latest;
    const s = span();
    const series = fetchSeries(t, s);
    const [{ data: drift }, { data: versions }, { data: current }] = await (early || reads());
    const all = await series;
    if (mine !== latest) return;
    drawDrift(drift);
    drawSeries(all);
    drawParameters(s, versions, current);
    showMessage("");
    markLoaded();
  } catch (e) {
    showMessage(`Could not load twin ${twinId}: ${e.message}`);
  }
}

document.getElementById("ranges").addEventListener("click", (e) => {
  const seconds = e.target.dataset.range;
  if (seconds === undefined) return;
  state.range = Number(seconds);
  state.zoom = null;
  history.replaceState(null, "", `?range=${state.range}`); // a link to this view
  refresh(true);
});

// -- what if ---------------------------------------------------------------------------------
async function prepareWhatIf() {
  const t = state.twin;
  document.getElementById("whatif-inputs").textContent = t.spec.inputs.join(", ") || "no inputs: leave rows empty";
  const { data } = await api(`${base}/observations?limit=1&start=${t.last_ts ?? 0}`);
  const last = data.observations.length ? data.observations[0].inputs : {};
  const row = t.spec.inputs.map((name) => fmt(last[name] ?? 0)).join(", ");
  const rows = document.getElementById("whatif-rows");
  if (!rows.value) rows.value = Array(10).fill(row).join("\n"); // never over what the user typed
  rows.dataset.ready = "true";
}

document.getElementById("whatif").addEventListener("submit", async (e) => {
  e.preventDefault();
  const t = state.twin, names = t.spec.inputs;
  const lines = document.getElementById("whatif-rows").value.split("\n").filter((l) => l.trim() || !names.length);
  const inputs = lines.map((l) => Object.fromEntries(l.split(",").map((v, i) => [names[i], Number(v)]).filter(([n]) => n)));
  const dt = Number(document.getElementById("whatif-dt").value);
  try {
    const { data: r } = await api(`${base}/predict`, { inputs, dt });
    const ts = r.outputs.map((_, i) => (r.context_ts ?? 0) + dt * (i + 1));
    const box = document.getElementById("whatif-plots");
    for (const name of t.spec.outputs) {
      const mean = r.outputs.map((o) => o[name]), std = r.std.map((o) => o[name] ?? 0);
      upsert(`whatif-${name}`, box, `${name}: what if (version ${r.version})`, [
        { label: "predicted", color: COLORS.predicted, points: true },
        { label: "+2 std", color: "transparent" }, { label: "−2 std", color: "transparent" },
      ], [ts, mean, mean.map((m, i) => m + 2 * std[i]), mean.map((m, i) => m - 2 * std[i])], { bands: [[2, 3]] });
    }
    showMessage("");
  } catch (err) {
    showMessage(`What-if failed: ${err.message}`);
  }
});

refresh(true).then(prepareWhatIf).catch((e) => showMessage(e.message));
setInterval(() => refresh(false), LIVE_MS);
