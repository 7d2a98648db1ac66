// The fleet page: one page of twins at a time from GET /twins (sorted, filtered and paged on
// the server, so it stays fast at 10,000 twins), refreshed every few seconds.
"use strict";

const PAGE = 50;
const REFRESH_MS = 3000;
const RECENT_DRIFT_S = 3600; // a drift event newer than this makes the badge "drifting"
const fleet = { offset: 0, total: 0 };

function query() {
  const q = new URLSearchParams({
    limit: PAGE, offset: fleet.offset,
    sort: document.getElementById("sort").value,
    desc: document.getElementById("desc").checked,
  });
  const prefix = document.getElementById("prefix").value.trim();
  if (prefix) q.set("prefix", prefix);
  return q;
}

function errorCell(rmse) {
  const parts = Object.entries(rmse || {}).map(([name, e]) => {
    const worse = e.twin !== null && e.first_guess !== null && e.twin > e.first_guess;
    return el("span", { class: worse ? "bad" : "" }, `${name} ${fmt(e.twin, 3)} (${fmt(e.first_guess, 3)})`);
  });
  const td = el("td");
  parts.forEach((p, i) => { if (i) td.append(" · "); td.append(p); });
  return td;
}

function driftCell(drift, now) {
  if (!drift || !drift.events) return el("td", {}, el("span", { class: "badge ok" }, "steady"));
  const recent = drift.last_at !== null && now - drift.last_at < RECENT_DRIFT_S;
  const badge = el("span", { class: recent ? "badge warn" : "badge" },
    recent ? `drifting (${fmtAge(now - drift.last_at)} ago)` : `${drift.events} past`);
  return el("td", { title: `${drift.events} drift events` }, badge);
}

function row(t, now) {
  const status = t.status || (t.version > 0 ? "ok" : "new");
  const lag = t.calibration_lag;
  return el("tr", { "data-twin-id": t.id },
    el("td", {}, el("a", { href: `/ui/twins/${t.id}` }, t.name)),
    el("td", {}, t.spec.model.kind),
    el("td", {}, (t.spec.learner && t.spec.learner.method) || "default"),
    el("td", {}, el("span", { class: `badge ${status === "failing" ? "bad" : ""}`, title: t.error || "" }, status)),
    el("td", { class: "num" }, String(t.version)),
    el("td", { class: "num" }, lag.observations ? `${lag.observations} obs, ${fmtAge(lag.seconds)}` : "0"),
    errorCell(t.rmse),
    driftCell(t.drift, now),
    el("td", {}, fmtTime(t.last_ts)),
  );
}

let latest = 0; // the newest load asked for: an older answer arriving after it is dropped

async function load() {
  const mine = ++latest;
  try {
    const { data, headers } = await api("/twins?" + query());
    if (mine !== latest) return;
    fleet.total = Number(headers.get("x-total-count") || data.length);
    const now = Date.now() / 1000;
    document.querySelector("#fleet tbody").replaceChildren(...data.map((t) => row(t, now)));
    const last = Math.min(fleet.offset + data.length, fleet.total);
    document.getElementById("count").textContent =
      fleet.total ? `${fleet.offset + 1}–${last} of ${fleet.total} twins` : "no twins yet";
    document.getElementById("prev").disabled = fleet.offset === 0;
    document.getElementById("next").disabled = last >= fleet.total;
    showMessage("");
    markLoaded();
  } catch (e) {
    showMessage(`Could not load the fleet: ${e.message}`);
  }
}

function restart() { fleet.offset = 0; load(); }
document.getElementById("prefix").addEventListener("input", restart);
document.getElementById("sort").addEventListener("change", restart);
document.getElementById("desc").addEventListener("change", restart);
document.getElementById("prev").addEventListener("click", () => { fleet.offset = Math.max(fleet.offset - PAGE, 0); load(); });
document.getElementById("next").addEventListener("click", () => { fleet.offset += PAGE; load(); });
load();
setInterval(load, REFRESH_MS);
