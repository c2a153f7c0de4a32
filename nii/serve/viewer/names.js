// The words the operator reads for the service's codes, in one place.

import { el } from "./dom.js";

export const KIND_NAMES = {
  single_energy: "Single-energy X-ray",
  dual_energy: "Dual-energy X-ray",
  pseudo_colour: "Colour image",
  ct_volume: "CT volume",
};

export const STATUS_NAMES = { queued: "Queued", running: "Analysing", done: "Analysed", failed: "Failed" };

export const OUTCOME_NAMES = { clear: "Cleared", search: "Search", threat: "Threat confirmed" };

/** DICOS threat categories (nii.serve.decisions.THREAT_CATEGORIES). */
export const CATEGORY_NAMES = {
  EXPLOSIVE: "Explosive",
  PROHIBITED_ITEM: "Prohibited item",
  CONTRABAND: "Contraband",
  ANOMALY: "Anomaly",
  OTHER: "Other",
};

/** What a category covers, where an officer chooses one. */
const CATEGORY_HINTS = { PROHIBITED_ITEM: "weapon, knife…", CONTRABAND: "narcotics, currency…" };

/** An <option> per DICOS category, for the forms that ask for one (decisions, cases). */
export const categoryOptions = () =>
  Object.entries(CATEGORY_NAMES).map(([code, name]) =>
    el("option", { value: code }, CATEGORY_HINTS[code] ? `${name} (${CATEGORY_HINTS[code]})` : name));

export const nameOf = (table, code) => table[code] ?? String(code ?? "").replaceAll("_", " ");
