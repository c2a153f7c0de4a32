// The scan queue: newest first, the machine's verdict, alert counts and the
// officer's decision, kept current by the service's live events.

import { api } from "./api.js";
import { el, $, localTime, shortId } from "./dom.js";
import { KIND_NAMES, OUTCOME_NAMES, STATUS_NAMES, nameOf } from "./names.js";

const PAGE = 100;

/** Newest first, as the service lists them. */
const newestFirst = (a, b) => b.received_at.localeCompare(a.received_at) || a.scan_id.localeCompare(b.scan_id);

export class Queue {
  /**
   * @param {HTMLElement} root the queue section
   * @param {{onSelect: (scan) => void, onError: (message: string) => void}} hooks
   */
  constructor(root, { onSelect, onError }) {
    this.root = root;
    this.list = $("#queue-list", root);
    this.onSelect = onSelect;
    this.onError = onError;
    this.scans = []; // ScanPublic, newest first
    this.rows = new Map(); // scan_id -> <li>
    this.total = 0;
    this.selectedId = null;
    this.filters = { decision: "", status: "" };

    for (const name of ["decision", "status"]) {
      $(`#filter-${name}`, root).addEventListener("change", (event) => {
        this.filters[name] = event.target.value;
        this.reload();
      });
    }
    $("#queue-more", root).addEventListener("click", () => this.loadMore());
  }

  /** Empty (logged out). */
  reset() {
    this.reloading = null; // an answer still on its way is for the user who left
    this.scans = [];
    this.total = 0;
    this.selectedId = null;
    this.render();
  }

  get selected() {
    return this.scans.find((s) => s.scan_id === this.selectedId) ?? null;
  }

  /**
   * Fetch the first page again (start, filters changed, live stream reconnected).
   * Reloads can overlap (log-in and the live stream's first connection both ask):
   * only the latest one's answer is kept, and live events that came while it was
   * on its way are put back over it, since the answer may predate them.
   */
  async reload() {
    const request = (this.reloading = { live: new Map() });
    try {
      const { scans, total } = await api.scans({ ...this.filters, limit: PAGE });
      if (this.reloading !== request) return; // a later reload supersedes this answer
      this.reloading = null;
      this.scans = scans;
      this.total = total;
      for (const scan of request.live.values()) this.upsert(scan, { quiet: true });
      this.render();
      if (!this.selected && scans.length && this.selectedId === null) this.select(scans[0].scan_id);
    } catch (err) {
      if (this.reloading === request) this.reloading = null;
      if (err.status !== 401) this.onError(`The scan list could not be loaded: ${err.message}`);
    }
  }

  async loadMore() {
    try {
      const { scans, total } = await api.scans({ ...this.filters, limit: PAGE, offset: this.scans.length });
      const known = new Set(this.scans.map((s) => s.scan_id));
      this.scans.push(...scans.filter((s) => !known.has(s.scan_id)));
      this.total = total;
      this.render();
    } catch (err) {
      if (err.status !== 401) this.onError(`Older scans could not be loaded: ${err.message}`);
    }
  }

  /**
   * A live event: a new scan goes in at its place (the top), a changed one is
   * redrawn where it is. `quiet` updates the list without drawing it.
   */
  upsert(scan, { quiet = false } = {}) {
    this.reloading?.live.set(scan.scan_id, scan);
    const at = this.scans.findIndex((s) => s.scan_id === scan.scan_id);
    if (at >= 0 && this.scans[at].revision > scan.revision) return; // we already show a later state
    const wanted = this.matches(scan);
    if (at >= 0 && !wanted) {
      this.scans.splice(at, 1);
      this.total -= 1;
    } else if (at >= 0) {
      this.scans[at] = scan;
    } else if (wanted && this.olderThanListed(scan)) {
      // A change to a scan on a page not loaded yet: it is already counted,
      // and listing it here would make "Show older scans" skip one.
      return;
    } else if (wanted) {
      this.scans.push(scan);
      this.total += 1;
    } else {
      return;
    }
    if (!quiet) this.render(at < 0 ? scan.scan_id : null);
  }

  /** Whether `scan` sits below the last loaded row while older pages are still unloaded. */
  olderThanListed(scan) {
    const oldest = this.scans.reduce((a, b) => (newestFirst(a, b) > 0 ? a : b), this.scans[0]);
    return this.scans.length < this.total && oldest !== undefined && newestFirst(scan, oldest) > 0;
  }

  matches(scan) {
    return (!this.filters.decision || scan.decision === this.filters.decision)
      && (!this.filters.status || scan.status === this.filters.status);
  }

  select(id) {
    this.selectedId = id;
    for (const [rowId, row] of this.rows) {
      const button = row.firstElementChild;
      if (rowId === id) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
    this.rows.get(id)?.scrollIntoView({ block: "nearest" });
    const scan = this.selected;
    if (scan) this.onSelect(scan);
  }

  /** J/K and the arrow keys: +1 is the next (older) scan down the list. */
  step(delta) {
    if (!this.scans.length) return;
    const at = this.scans.findIndex((s) => s.scan_id === this.selectedId);
    const next = at < 0 ? 0 : Math.min(Math.max(at + delta, 0), this.scans.length - 1);
    if (next !== at) this.select(this.scans[next].scan_id);
  }

  render(fresh = null) {
    // However the list was put together (pages, live events, reloads), it shows newest first.
    this.scans.sort(newestFirst);
    const focused = document.activeElement?.closest?.("[data-scan]")?.dataset.scan;
    const rows = this.scans.map((scan) => {
      const row = this.row(scan);
      if (scan.scan_id === fresh) row.classList.add("fresh"); // a short highlight: "this just arrived"
      return row;
    });
    this.rows = new Map(this.scans.map((scan, i) => [scan.scan_id, rows[i]]));
    this.list.replaceChildren(...rows);
    if (focused) this.rows.get(focused)?.firstElementChild.focus({ preventScroll: true });
    $("#queue-count", this.root).textContent = `${this.scans.length} of ${this.total}`;
    $("#queue-more", this.root).hidden = this.scans.length >= this.total;
    $("#queue-empty", this.root).hidden = this.scans.length > 0;
  }

  row(scan) {
    const verdict = scan.status === "done"
      ? el("span", { class: `badge ${scan.decision === "ALARM" ? "alarm" : "clear"}` }, scan.decision)
      : el("span", { class: `badge ${scan.status}` }, nameOf(STATUS_NAMES, scan.status));
    const counts = scan.status === "done"
      ? `${plural(scan.alert_count, "alert")}${scan.alarm_count ? ` · ${plural(scan.alarm_count, "alarm")}` : ""}`
      : "";
    const officer = scan.officer_decision
      ? el("span", { class: `officer ${scan.officer_decision}` }, nameOf(OUTCOME_NAMES, scan.officer_decision))
      : scan.status === "done" ? el("span", { class: "officer pending" }, "Awaiting decision") : null;
    const button = el("button", {
      type: "button", class: "scan-row", dataset: { scan: scan.scan_id }, title: scan.scan_id,
      "aria-current": scan.scan_id === this.selectedId ? "true" : null,
      onclick: () => this.select(scan.scan_id),
    },
    el("span", { class: "row-top" }, verdict, el("span", { class: "counts" }, counts),
      el("time", { datetime: scan.received_at }, localTime(scan.received_at))),
    el("span", { class: "row-meta" },
      `${scan.kind ? nameOf(KIND_NAMES, scan.kind) : "Unknown kind"} · ${scan.scanner_id ?? "unknown scanner"} · ${shortId(scan.scan_id)}`),
    scan.status === "failed" ? el("span", { class: "row-error" }, scan.error ?? "the analysis failed") : null,
    officer);
    return el("li", {}, button);
  }
}

const plural = (n, noun) => `${n ?? 0} ${noun}${n === 1 ? "" : "s"}`;

/**
 * Follow the service's scan events. The browser's EventSource reconnects by
 * itself (sending Last-Event-ID, so nothing is missed); when the service
 * refuses it outright (logged out, restarted) it stays closed and we open a
 * fresh one a little later. `onOpen` runs on every connection so the caller
 * can reload what may have changed meanwhile.
 */
export function followScans({ onScan, onOpen, onState }) {
  let source = null;
  let retry = null;
  const connect = () => {
    source = api.events();
    source.addEventListener("open", () => {
      onState("live");
      onOpen();
    });
    source.addEventListener("scan", (event) => {
      try {
        onScan(JSON.parse(event.data));
      } catch {
        /* a malformed event: ignore it, the next reload corrects the list */
      }
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        onState("offline");
        retry = setTimeout(connect, 5000);
      } else {
        onState("reconnecting");
      }
    });
  };
  connect();
  return {
    close() {
      clearTimeout(retry);
      source?.close();
    },
  };
}
