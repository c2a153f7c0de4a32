// Cases on the open scan: open one after a search (findings and references),
// then change its status, add notes and photographs from the physical search.
//
// As with decisions, the service decides who may do what (officers open and
// change cases; a closed case reopens only by a supervisor); the panel sends
// and shows the service's answer.

import { api } from "./api.js";
import { $, el, localTime } from "./dom.js";
import { CATEGORY_NAMES, categoryOptions, nameOf } from "./names.js";

const FIELDS = ["category", "description", "quantity", "bag_tag", "container_number", "declaration_number"];

export class CasePanel {
  /**
   * @param {HTMLElement} root the case section
   * @param {HTMLDialogElement} dialog the "open a case" dialog
   */
  constructor(root, dialog) {
    this.root = root;
    this.dialog = dialog;
    this.scan = null;
    this.cases = [];
    $("#case-category", dialog).append(...categoryOptions());
    $("#case-open", root).addEventListener("click", () => this.openDialog());
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "confirm") this.openCase();
    });
  }

  /** Show the cases that hold `scan` (fetched fresh: another officer may have opened one). */
  async show(scan) {
    this.scan = scan;
    $("#case-open", this.root).disabled = !scan;
    if (!scan) return this.render([]);
    try {
      const { cases } = await api.cases({ scan_id: scan.scan_id });
      if (this.scan?.scan_id !== scan.scan_id) return; // moved on meanwhile
      const full = await Promise.all(cases.map((c) => api.caseById(c.case_id)));
      this.render(full);
    } catch (err) {
      this.message(`Cases could not be loaded: ${err.message}`, "error");
    }
  }

  render(cases) {
    this.cases = cases;
    $("#case-list", this.root).replaceChildren(...cases.map((c) => this.caseItem(c)));
  }

  caseItem(c) {
    const status = el("select", { "aria-label": `Status of case ${c.case_id}`, class: "case-status" },
      ...["open", "referred", "closed"].map((s) => el("option", { value: s, selected: s === c.status }, s)));
    // Saved by its button, not on "change": arrow keys on a focused list would
    // otherwise save each step, and one step too many closes the case.
    const setStatus = el("button", { type: "button", class: "case-set-status" }, "Set status");
    setStatus.addEventListener("click", () => {
      if (status.value === c.status) return;
      if (status.value === "closed" && !window.confirm(`Close case ${c.case_id}? Only a supervisor can reopen it.`)) return;
      this.change(c.case_id, () => api.changeCase(c.case_id, { status: status.value }));
    });
    const closed = c.status === "closed";  // the service refuses changes until a supervisor reopens it
    const note = el("input", { type: "text", maxlength: 4000, placeholder: "Add a note…", "aria-label": "Note",
                               disabled: closed });
    note.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && note.value.trim()) this.change(c.case_id, () => api.addNote(c.case_id, note.value.trim()));
    });
    const photo = el("input", { type: "file", accept: "image/jpeg,image/png,application/pdf", "aria-label": "Attach a photograph",
                                disabled: closed });
    photo.addEventListener("change", () => {
      if (photo.files[0]) this.change(c.case_id, () => api.attach(c.case_id, photo.files[0]));
    });
    return el("li", { class: "case", dataset: { caseId: c.case_id } },
      el("p", {}, el("strong", {}, `Case ${c.case_id}`), " · ", status, " ", setStatus,
        c.seized ? el("span", { class: "tag" }, "seized") : null),
      el("p", { class: "muted" }, [
        c.category ? nameOf(CATEGORY_NAMES, c.category) : "No category",
        c.quantity, c.bag_tag && `bag tag ${c.bag_tag}`, c.container_number && `container ${c.container_number}`,
        c.declaration_number && `declaration ${c.declaration_number}`,
      ].filter(Boolean).join(" · ")),
      c.description ? el("p", {}, c.description) : null,
      el("ul", { class: "case-notes" }, ...c.notes.map((n) => el("li", {}, `${n.username}, ${localTime(n.at)}: `, n.text))),
      el("ul", { class: "case-attachments" }, ...c.attachments.map((a) =>
        el("li", {}, el("a", { href: `/api/cases/${c.case_id}/attachments/${a.id}` }, a.name)))),
      note, photo);
  }

  openDialog() {
    if (!this.scan || this.dialog.open) return;
    for (const name of FIELDS) $(`#case-${name.replaceAll("_", "-")}`, this.dialog).value = "";
    $("#case-seized", this.dialog).checked = false;
    this.dialog.returnValue = "";
    this.dialog.showModal();
  }

  async openCase() {
    const body = { scan_ids: [this.scan.scan_id], seized: $("#case-seized", this.dialog).checked };
    for (const name of FIELDS) {
      const value = $(`#case-${name.replaceAll("_", "-")}`, this.dialog).value.trim();
      if (value) body[name] = value;
    }
    await this.change(null, () => api.openCase(body));
  }

  async change(caseId, send) {
    let text, kind;
    try {
      const c = await send();
      [text, kind] = [caseId === null ? `Case ${c.case_id} opened.` : `Case ${c.case_id} saved.`, "ok"];
    } catch (err) {
      [text, kind] = [`Not saved: ${err.message}`, "error"];
    }
    // Said once the list shows the change, so what the officer reads is what is there.
    await this.show(this.scan);
    this.message(text, kind);
  }

  message(text, kind = "") {
    const box = $("#case-message", this.root);
    box.textContent = text;
    box.className = kind;
    box.hidden = !text;
  }
}
