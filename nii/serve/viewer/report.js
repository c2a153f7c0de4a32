// The supervisors' report page: a period and a grouping in; charts, tables
// and CSV downloads out. The charts are plain SVG drawn here (no chart
// library, nothing from the internet). Bar lengths are proportional to the
// numbers, and each bar carries its number (data-value, and a tooltip) so
// what is drawn can be checked against what the service counted.

import { $, $$, el, errorBanner, svg, words } from "./dom.js";

const OUTCOMES = ["threat", "search", "clear", "none"];
const OUTCOME_WORDS = { threat: "Threat", search: "Search", clear: "Clear", none: "Not decided" };
const VERDICTS = ["ALARM", "CLEAR"];
// An officer agrees with an ALARM by searching or confirming a threat, with a CLEAR by clearing.
const AGREES = { ALARM: ["threat", "search"], CLEAR: ["clear"] };

// Chart geometry, in SVG user units; the SVG scales to the card's width.
const W = 720;
const H = 230;
const PAD = { left: 56, right: 12, top: 18, bottom: 44 };
const PLOT_W = W - PAD.left - PAD.right;
const PLOT_H = H - PAD.top - PAD.bottom;
const MAX_LABELS = 14;

// -- talking to the service -----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function getJson(path) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin" });
  } catch {
    throw new ApiError(0, "the service cannot be reached; check the network and try again");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`.trim();
    try {
      const body = await response.json();
      if (typeof body.detail === "string") message = body.detail;
      else if (Array.isArray(body.detail)) message = body.detail.map((d) => d.msg).join("; ");
    } catch {
      /* not JSON: keep the status line */
    }
    throw new ApiError(response.status, message);
  }
  return response.json();
}

const query = (params) => new URLSearchParams(params).toString();

// -- formatting -----------------------------------------------------------------------------------------------

const percent = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);

/** Seconds for people: "42 s", "3 min 05 s", "2 h 10 min". */
function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

/** Seconds in a few characters, for chart labels: "45 s", "52 min", "1.5 h". */
function shortDuration(seconds) {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function cellText(column, value) {
  if (value === null || value === undefined) return "–";
  if (column.endsWith("_rate")) return percent(value);
  if (column.endsWith("_s")) return value.toFixed(1);
  return String(value);
}

/** A local calendar date as YYYY-MM-DD (what <input type=date> holds). */
function isoDate(day) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${day.getFullYear()}-${pad(day.getMonth() + 1)}-${pad(day.getDate())}`;
}

/** A short axis label: a day as MM-DD, a category in words, anything else cut to 12 characters. */
function shortLabel(label, by) {
  if (by === "day") return label.slice(5);
  if (by === "category") return words(label);
  return label.length > 12 ? `${label.slice(0, 11)}…` : label;
}

// -- charts ---------------------------------------------------------------------------------------------------

function chartFrame(label, top, format) {
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": label });
  const base = PAD.top + PLOT_H;
  chart.append(
    svg("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: PAD.top, y2: PAD.top }),
    svg("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: base, y2: base }),
    svg("text", { class: "tick", x: PAD.left - 6, y: PAD.top + 4, "text-anchor": "end" }, format(top)),
    svg("text", { class: "tick", x: PAD.left - 6, y: base, "text-anchor": "end" }, format(0)),
  );
  return chart;
}

function groupLabels(chart, labels, by, step) {
  const every = Math.ceil(labels.length / MAX_LABELS);
  labels.forEach((label, i) => {
    if (i % every) return;
    const x = PAD.left + (i + 0.5) * step;
    chart.append(svg("text", { class: "label", x, y: PAD.top + PLOT_H + 16, "text-anchor": "middle" },
      svg("title", {}, label), shortLabel(label, by)));
  });
}

/** Height of a bar for `value` on a scale whose top is `top`. */
const barHeight = (value, top) => (top > 0 && value ? (value / top) * PLOT_H : 0);

/**
 * Bars: one series (`keys` of one name) or several side by side, per group.
 * `series` is [{key, name, cls}], `rows` is [{label, values: {key: number|null}}].
 */
function barChart(label, rows, series, { by, format = String, top = null } = {}) {
  const highest = top ?? Math.max(0, ...rows.flatMap((r) => series.map((s) => r.values[s.key] ?? 0)));
  const chart = chartFrame(label, highest, format);
  const step = PLOT_W / Math.max(rows.length, 1);
  const width = Math.max(1, Math.min((step * 0.75) / series.length, 48));
  rows.forEach((row, i) => {
    series.forEach((s, j) => {
      const value = row.values[s.key];
      const h = barHeight(value, highest);
      const x = PAD.left + i * step + (step - width * series.length) / 2 + j * width;
      const text = value === null || value === undefined ? "no data" : format(value);
      chart.append(svg("rect", {
        class: `bar ${s.cls}`, x, y: PAD.top + PLOT_H - h, width, height: h,
        dataset: { group: row.label, series: s.key, value: value ?? "" },
      }, svg("title", {}, `${row.label} · ${s.name}: ${text}`)));
      if (width >= 26 && value !== null && value !== undefined) { // room for a label over the bar
        const at = { x: x + width / 2, y: PAD.top + PLOT_H - h - 4 };
        chart.append(svg("text", { class: "value", ...at, "text-anchor": "middle" }, format(value)));
      }
    });
  });
  groupLabels(chart, rows.map((r) => r.label), by, step);
  return chart;
}

/** Stacked bars: the standing decisions of each group's scans, threat at the bottom. */
function stackedChart(label, groups, by) {
  const highest = Math.max(0, ...groups.map((g) => g.scans));
  const chart = chartFrame(label, highest, String);
  const step = PLOT_W / Math.max(groups.length, 1);
  const width = Math.max(1, Math.min(step * 0.75, 48));
  groups.forEach((group, i) => {
    const x = PAD.left + i * step + (step - width) / 2;
    let y = PAD.top + PLOT_H;
    for (const outcome of OUTCOMES) {
      const value = group.outcomes[outcome] ?? 0;
      const h = barHeight(value, highest);
      y -= h;
      chart.append(svg("rect", {
        class: `bar outcome-${outcome}`, x, y, width, height: h,
        dataset: { group: group.group, outcome, value },
      }, svg("title", {}, `${group.group} · ${OUTCOME_WORDS[outcome]}: ${value}`)));
    }
  });
  groupLabels(chart, groups.map((g) => g.group), by, step);
  return chart;
}

/** The confusion table as a heat map: darker is more scans; the cells where officer and machine agree are outlined. */
function heatMap(confusion) {
  const cellW = 130;
  const cellH = 54;
  const left = 112;
  const topPad = 26;
  const highest = Math.max(0, ...VERDICTS.flatMap((v) => OUTCOMES.map((o) => confusion[v][o])));
  const chart = svg("svg", {
    viewBox: `0 0 ${left + cellW * OUTCOMES.length + 4} ${topPad + cellH * VERDICTS.length + 4}`,
    class: "chart heatmap", role: "img", "aria-label": "Machine verdict against officer decision",
  });
  OUTCOMES.forEach((o, j) => chart.append(svg("text", {
    class: "label", x: left + (j + 0.5) * cellW, y: 16, "text-anchor": "middle" }, `Officer: ${OUTCOME_WORDS[o]}`)));
  VERDICTS.forEach((verdict, i) => {
    const y = topPad + i * cellH;
    const rowTotal = OUTCOMES.reduce((sum, o) => sum + confusion[verdict][o], 0);
    chart.append(svg("text", { class: "label", x: left - 8, y: y + cellH / 2 + 4, "text-anchor": "end" },
      `Machine ${verdict}`));
    OUTCOMES.forEach((outcome, j) => {
      const value = confusion[verdict][outcome];
      const share = highest > 0 ? value / highest : 0;
      const agrees = AGREES[verdict].includes(outcome);
      chart.append(svg("rect", {
        class: `cell${agrees ? " agree" : ""}`, x: left + j * cellW + 2, y: y + 2, width: cellW - 4, height: cellH - 4,
        "fill-opacity": (0.08 + 0.92 * share).toFixed(3),
        dataset: { machine: verdict, officer: outcome, value },
      }, svg("title", {}, `Machine ${verdict}, officer ${OUTCOME_WORDS[outcome].toLowerCase()}: ${value}`)));
      const of = rowTotal ? ` (${Math.round((100 * value) / rowTotal)} %)` : "";
      chart.append(svg("text", {
        class: `cell-text${share > 0.55 ? " on-dark" : ""}`, x: left + (j + 0.5) * cellW, y: y + cellH / 2 + 5,
        "text-anchor": "middle" }, `${value}${of}`));
    });
  });
  return chart;
}

function legend(entries) {
  return entries.map(([cls, name]) => el("span", { class: "key" }, el("span", { class: `swatch ${cls}` }), name));
}

// -- tables ---------------------------------------------------------------------------------------------------

function table(spec) {
  const numeric = (i) => i > 0 && spec.columns[i] !== "machine";
  const head = el("tr", {},
    spec.columns.map((c, i) => el("th", { scope: "col", class: numeric(i) ? "num" : null }, words(c))));
  const rows = spec.rows.map((row) => el("tr", { class: row[0] === "total" ? "total" : null },
    row.map((value, i) => (i === 0 ? el("th", { scope: "row" }, String(value))
      : el("td", { class: numeric(i) ? "num" : null }, cellText(spec.columns[i], value))))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, rows));
}

// -- the page -------------------------------------------------------------------------------------------------

const showError = errorBanner();

function refuse(message, withLogin = false) {
  const note = $("#report-refused");
  note.replaceChildren(message, withLogin ? el("a", { href: "/" }, " Log in on the inspection console.") : "");
  note.hidden = false;
  $("#report-body").hidden = true;
}

function tile(name, value, detail = "") {
  return el("div", { class: "tile", dataset: { figure: name } }, el("span", { class: "tile-name" }, name),
    el("strong", {}, value), detail ? el("span", { class: "muted" }, detail) : null);
}

function render(report) {
  const { groups, total, by } = report;
  const when = (iso) => iso.slice(0, 16).replace("T", " ");
  $("#report-period").textContent = `${when(report.from)} to ${when(report.to)} (${report.timezone}), by ${by}`;

  $("#summary").replaceChildren(
    tile("Scans", String(total.scans), `${total.analysed} analysed`),
    tile("Alarm rate", percent(total.alarm_rate), `${total.alarms} alarms`),
    tile("Decided", String(total.decided), `${total.reversals} reversed`),
    tile("Agreement", percent(total.agreement_rate), `of ${total.compared} decided`),
    tile("Median time to decision", duration(total.decision_time.median_s),
      `90 % within ${duration(total.decision_time.p90_s)}`),
    tile("Seizures", String(total.seized)),
  );

  const rows = (pick) => groups.map((g) => ({ label: g.group, values: pick(g) }));
  $("#chart-scans").replaceChildren(barChart("Scans received per group",
    rows((g) => ({ scans: g.scans })), [{ key: "scans", name: "scans", cls: "scans" }], { by }));
  $("#chart-alarm-rate").replaceChildren(barChart("Machine alarm rate per group",
    rows((g) => ({ alarm_rate: g.alarm_rate })), [{ key: "alarm_rate", name: "alarm rate", cls: "alarm-rate" }],
    { by, format: (x) => `${Math.round(100 * x)} %`, top: 1 }));

  $("#decisions-legend").replaceChildren(...legend(OUTCOMES.map((o) => [`outcome-${o}`, OUTCOME_WORDS[o]])));
  $("#chart-decisions").replaceChildren(stackedChart("Standing officer decisions per group", groups, by));

  $("#chart-confusion").replaceChildren(heatMap(total.confusion));

  $("#time-legend").replaceChildren(...legend([["median", "median"], ["p90", "90th percentile"]]));
  $("#chart-decision-time").replaceChildren(barChart("Time from scan to first decision per group",
    rows((g) => ({ median: g.decision_time.median_s, p90: g.decision_time.p90_s })),
    [{ key: "median", name: "median", cls: "median" }, { key: "p90", name: "90th percentile", cls: "p90" }],
    { by, format: shortDuration }));

  $("#chart-seizures").replaceChildren(barChart("Seized cases per category",
    report.categories.map((c) => ({ label: c, values: { seized: total.seizures[c] ?? 0 } })),
    [{ key: "seized", name: "seized", cls: "seized" }], { by: "category" }));

  for (const wrap of $$(".table-wrap")) wrap.replaceChildren(table(report.tables[wrap.dataset.table]));
  const params = { from: $("#report-from").value, to: $("#report-to").value, by };
  for (const link of $$("a.export")) link.href = `/api/report.csv?${query({ table: link.dataset.table, ...params })}`;
  $("#report-refused").hidden = true;
  $("#report-body").hidden = false;
}

let asked = 0;
async function show() {
  const params = { from: $("#report-from").value, to: $("#report-to").value, by: $("#report-by").value };
  if (!params.from || !params.to) return;
  history.replaceState(null, "", `/report?${query(params)}`);
  const token = ++asked;
  $("#report-body").setAttribute("aria-busy", "true");
  try {
    const report = await getJson(`/api/report?${query(params)}`);
    if (token === asked) {
      $("#banner").hidden = true;  // an earlier refusal no longer stands over these figures
      render(report);
    }
  } catch (err) {
    if (token !== asked) return;
    if (err.status === 401) refuse("You are not logged in.", true);
    else if (err.status === 403) refuse(`Reports are for supervisors and administrators: ${err.message}.`);
    else {
      // The last period's figures and CSV links must not stand under the new dates.
      $("#report-body").hidden = true;
      showError(`The report could not be made: ${err.message}`);
    }
  } finally {
    if (token === asked) $("#report-body").setAttribute("aria-busy", "false");
  }
}

$("#report-form").addEventListener("submit", (event) => {
  event.preventDefault();
  show();
});

async function start() {
  // The period and grouping from the address (a bookmarked report), else the last seven days.
  const given = new URLSearchParams(location.search);
  const today = new Date();
  const weekAgo = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 6);
  const tomorrow = new Date(today.getFullYear(), today.getMonth(), today.getDate() + 1);
  $("#report-from").value = given.get("from") ?? isoDate(weekAgo);
  $("#report-to").value = given.get("to") ?? isoDate(tomorrow);
  if (!$("#report-from").value || !$("#report-to").value) {
    // A date field takes no "2026-13-45": say so, rather than show nothing.
    $("#report-from").value = isoDate(weekAgo);
    $("#report-to").value = isoDate(tomorrow);
    showError("The address's dates are not dates; showing the last seven days.");
  }
  if (["day", "shift", "lane", "scanner"].includes(given.get("by"))) $("#report-by").value = given.get("by");
  try {
    const me = await getJson("/api/me");
    $("#who-name").textContent = me.username;
    $("#who-role").textContent = words(me.role);
    $("#who").hidden = false;
  } catch (err) {
    if (err.status === 401) return refuse("You are not logged in.", true);
    return showError(err.message);
  }
  await show();
}

start();
