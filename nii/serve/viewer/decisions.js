// The officer's decision on the open scan: clear, search, or a confirmed
// threat (with its DICOS category and a note), and the scan's decision history.
//
// The service decides who may do what: an operator's second decision on a
// scan is refused (403) and only a supervisor may reverse one. The page
// offers only what the user's permissions (from /api/me) and the scan's state
// allow, and still shows the service's own answer to what it sends.

import { api } from "./api.js";
import { el, $, localTime } from "./dom.js";
import { CATEGORY_NAMES, OUTCOME_NAMES, categoryOptions, nameOf } from "./names.js";

/** Scans the machine is still judging: clearing one would pass over an alarm still to come. */
const BEING_ANALYSED = new Set(["queued", "running"]);

export class DecisionPanel {
  /**
   * @param {HTMLElement} root the decision section
   * @param {HTMLDialogElement} dialog the threat / reversal dialog
   * @param {{user: () => ({username, role, permissions}|null), onDecided: (scanId: string) => void}} hooks
   */
  constructor(root, dialog, { user, onDecided }) {
    this.root = root;
    this.dialog = dialog;
    this.user = user;
    this.onDecided = onDecided;
    this.scan = null;
    this.history = [];
    this.busy = false;
    $("#dialog-category", dialog).append(...categoryOptions());

    for (const outcome of ["clear", "search", "threat"]) {
      $(`#decide-${outcome}`, root).addEventListener("click", () => this.request(outcome));
    }
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "confirm" && this.pending) this.submitDialog();
      this.pending = null;
    });
  }

  /** The open scan and its decisions, oldest first. */
  show(scan, history) {
    const changed = scan?.scan_id !== this.scan?.scan_id;
    this.scan = scan;
    this.history = history ?? [];
    if (changed) this.message("");
    const standing = this.history.at(-1);
    for (const outcome of ["clear", "search", "threat"]) {
      const why = this.unavailable(outcome, standing);
      const button = $(`#decide-${outcome}`, this.root);
      button.disabled = why !== null;
      button.title = why ?? "";
    }
    $("#decision-standing", this.root).textContent = !scan ? ""
      : standing ? `Standing decision: ${describe(standing)}`
        : "No decision yet";
    const reversed = new Set(this.history.map((d) => d.supersedes).filter((id) => id !== null));
    $("#decision-history", this.root).replaceChildren(...this.history.map((d) =>
      el("li", { class: reversed.has(d.id) ? "reversed" : "standing" },
        el("span", { class: `outcome ${d.outcome}` }, nameOf(OUTCOME_NAMES, d.outcome)),
        d.category ? ` · ${nameOf(CATEGORY_NAMES, d.category)}` : "",
        el("span", { class: "who" }, ` by ${d.username}, ${localTime(d.decided_at)}`),
        d.supersedes !== null ? el("span", { class: "tag" }, "reversal") : null,
        reversed.has(d.id) ? el("span", { class: "tag" }, "reversed") : null,
        d.note ? el("q", { class: "note" }, d.note) : null)));
  }

  /**
   * Keys C/S/T and the buttons. A confirmed threat always opens the dialog
   * (category and note); so does a supervisor's reversal, so one key press
   * cannot silently overturn a colleague's decision.
   */
  request(outcome) {
    if (this.dialog.open) return;
    const standing = this.history.at(-1);
    const why = this.unavailable(outcome, standing);
    if (why !== null) {
      if (this.scan && !this.busy) this.message(`Not available: ${why}.`, "error");
      return;
    }
    if (outcome === "threat" || standing) {
      this.openDialog(outcome, standing ?? null);
    } else {
      this.submit(this.scan.scan_id, { outcome });
    }
  }

  /** Why `outcome` cannot be recorded on the open scan now, or null when it can. */
  unavailable(outcome, standing) {
    const may = new Set(this.user()?.permissions ?? []);
    if (!this.scan || this.busy) return "no scan open";
    if (!may.has("decide")) return "your role does not record decisions";
    if (standing && !may.has("reverse_decision")) return "the scan is decided; only a supervisor can reverse it";
    if (standing && outcome === standing.outcome && outcome !== "threat") {
      return `the standing decision is already “${nameOf(OUTCOME_NAMES, outcome)}”`;
    }
    if (outcome === "clear" && BEING_ANALYSED.has(this.scan.status)) return "the scan is still being analysed";
    return null;
  }

  openDialog(outcome, reversing) {
    this.pending = { scanId: this.scan.scan_id, outcome };
    const form = this.dialog;
    $("#dialog-title", form).textContent = reversing
      ? `Reverse “${nameOf(OUTCOME_NAMES, reversing.outcome)}” to “${nameOf(OUTCOME_NAMES, outcome)}”`
      : "Confirm a threat";
    $("#dialog-category-row", form).hidden = outcome !== "threat";
    $("#dialog-category", form).required = outcome === "threat";
    $("#dialog-note-label", form).textContent = reversing ? "Reason for the reversal" : "Note (optional)";
    $("#dialog-note", form).required = Boolean(reversing);  // the service refuses a reversal without one
    $("#dialog-note", form).value = "";
    $("#dialog-confirm", form).textContent = reversing ? "Reverse decision" : "Record threat";
    this.dialog.returnValue = "";
    this.dialog.showModal();
    $(outcome === "threat" ? "#dialog-category" : "#dialog-note", form).focus();
  }

  submitDialog() {
    const { scanId, outcome } = this.pending;
    const note = $("#dialog-note", this.dialog).value.trim();
    const body = { outcome, note: note || null };
    if (outcome === "threat") body.category = $("#dialog-category", this.dialog).value;
    this.submit(scanId, body);
  }

  async submit(scanId, body) {
    this.busy = true;
    this.show(this.scan, this.history);
    // The operator may have moved on to another scan while this was sent.
    const which = () => (this.scan?.scan_id === scanId ? "" : "Previous scan: ");
    try {
      const decision = await api.decide(scanId, body);
      this.message(`${which()}Recorded: ${describe(decision)} by ${decision.username}.`, "ok");
      this.onDecided(scanId);
    } catch (err) {
      // The service's own words, e.g. "this scan already has a decision; only a supervisor can reverse it".
      this.message(`${which()}Not recorded: ${err.message}`, "error");
    } finally {
      this.busy = false;
      this.show(this.scan, this.history);
    }
  }

  message(text, kind = "") {
    const box = $("#decision-message", this.root);
    box.textContent = text;
    box.className = kind;
    box.hidden = !text;
  }
}

/** "Threat confirmed (Explosive)", "Cleared". */
const describe = (d) => `${nameOf(OUTCOME_NAMES, d.outcome)}${d.category ? ` (${nameOf(CATEGORY_NAMES, d.category)})` : ""}`;
