// The words the operator reads for the service's codes, in one place.

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

export const nameOf = (table, code) => table[code] ?? String(code ?? "").replaceAll("_", " ");
