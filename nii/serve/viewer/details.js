// The side panel's facts about the open scan and its alert list.

import { api } from "./api.js";
import { SEVERITY_COLOUR } from "./boxes.js";
import { el, $, localTime, words } from "./dom.js";
import { CATEGORY_NAMES, KIND_NAMES, nameOf } from "./names.js";

const STATUS_WORDS = {
  queued: "Waiting for analysis",
  running: "Being analysed",
  done: "Analysed",
  failed: "Analysis failed",
};

/** Title, facts and download links of the open scan. */
export function showFacts(root, scan, result) {
  const kind = scan.kind ? nameOf(KIND_NAMES, scan.kind) : "scan";
  $("#scan-title", root).textContent = `${scan.status === "done" ? scan.decision : nameOf(STATUS_WORDS, scan.status)} · ${kind}`;
  $("#scan-title", root).className = scan.status === "done" ? scan.decision.toLowerCase() : scan.status;

  const facts = [
    ["Scan", scan.scan_id],
    ["Status", nameOf(STATUS_WORDS, scan.status)],
    scan.status === "failed" ? ["Reason", scan.error ?? "unknown"] : null,
    ["Scanner", scan.scanner_id ?? "unknown"],
    ["Received", localTime(scan.received_at)],
    scan.acquired_at ? ["Acquired", localTime(scan.acquired_at)] : null,
    result?.scan?.metadata?.bag_tag ? ["Bag tag", result.scan.metadata.bag_tag] : null,
    result?.scan?.metadata?.container_id ? ["Container", result.scan.metadata.container_id] : null,
    result ? ["Calibration", result.calibration_profile] : null,
    result ? ["Models", result.models.map((m) => `${m.name} ${m.version}`).join(", ") || "none"] : null,
  ].filter(Boolean);
  $("#scan-facts", root).replaceChildren(...facts.flatMap(([term, value]) =>
    [el("dt", {}, term), el("dd", { class: term === "Reason" ? "error-text" : null }, String(value))]));

  const downloads = $("#scan-downloads", root);
  downloads.replaceChildren(...(scan.status === "done" ? [
    ["annotated.png", "Annotated image"],
    ["result.json", "Result (JSON)"],
    ["tdr.dcm", "Threat report (DICOS TDR)"],
  ].map(([name, label]) => el("a", { href: api.outputUrl(scan.scan_id, name), download: "" }, label)) : []));
}

/**
 * The alert list: class, score, severity, model and, from the physics rules,
 * why in plain words. Clicking an alert outlines it (and on CT goes to its slice).
 */
export function showAlerts(root, scan, result, { onFocus, highlighted }) {
  const list = $("#alert-list", root);
  const note = $("#alerts-note", root);
  $("#alerts-count", root).textContent = result ? String(result.alerts.length) : "";
  if (!result) {
    list.replaceChildren();
    note.textContent = scan.status === "failed" ? "No alerts: the analysis failed." : "Alerts appear once the scan is analysed.";
    note.hidden = false;
    return;
  }
  note.textContent = "No alerts: nothing reached the models' reporting level.";
  note.hidden = result.alerts.length > 0;
  list.replaceChildren(...result.alerts.map((alert) => {
    const others = alert.sources.filter((s) => s.model.name !== alert.model.name);
    const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = SEVERITY_COLOUR[alert.severity] ?? SEVERITY_COLOUR.advisory; // the box's colour
    return el("li", {},
      el("button", {
        type: "button", class: `alert-item ${alert.severity}`, dataset: { alert: alert.id },
        "aria-pressed": String(alert.id === highlighted), onclick: () => onFocus(alert),
      },
      el("span", { class: "alert-head" },
        swatch,
        el("strong", {}, `#${alert.id} ${words(alert.class)}`),
        el("span", { class: "score" }, `${Math.round(alert.score * 100)}%`),
        el("span", { class: `severity ${alert.severity}` }, alert.severity === "alarm" ? "Alarm" : "Advisory")),
      el("span", { class: "alert-line" }, `${nameOf(CATEGORY_NAMES, alert.dicos_category)} · model ${alert.model.name} ${alert.model.version}`),
      alert.mass_g !== undefined ? el("span", { class: "alert-line" }, `about ${Math.round(alert.mass_g)} g`) : null,
      alert.explanation ? el("span", { class: "explanation" }, alert.explanation) : null,
      others.length ? el("span", { class: "alert-line" },
        `also seen by ${others.map((s) => `${s.model.name} ${s.model.version} (${Math.round(s.score * 100)}%)`).join(", ")}`) : null));
  }));
}
