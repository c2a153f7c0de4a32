// Keyboard shortcuts. One table drives both the handler and the hint shown
// on the page, so what the page says is always what the keys do.

import { el } from "./dom.js";

/**
 * Build the shortcut table over the page's actions.
 * @param {{viewer, queue, decisions, tools}} parts the page's parts, and the TOOLS table
 * @returns {{keys: string[], label: string, run: (event: KeyboardEvent) => void, ct?: boolean}[]}
 */
export function shortcuts({ viewer, queue, decisions, tools }) {
  return [
    { keys: ["C"], label: "clear", run: () => decisions.request("clear") },
    { keys: ["S"], label: "search", run: () => decisions.request("search") },
    { keys: ["T"], label: "threat…", run: () => decisions.request("threat") },
    { keys: ["J", "↓"], codes: ["j", "ArrowDown"], label: "next scan", run: () => queue.step(1) },
    { keys: ["K", "↑"], codes: ["k", "ArrowUp"], label: "previous scan", run: () => queue.step(-1) },
    { keys: ["B"], label: "boxes on/off", run: () => viewer.toggleBoxes() },
    { keys: ["+", "−"], codes: ["+", "=", "-", "_"], label: "zoom",
      run: (event) => viewer.zoomBy(event.key === "+" || event.key === "=" ? 1.25 : 0.8) },
    { keys: ["0"], label: "fit to view", run: () => viewer.fit() },
    // Shift, since the plain up and down arrows step through the queue.
    { keys: ["⇧+arrows"], codes: Object.keys(PAN).map((key) => `Shift+${key}`), label: "pan",
      run: (event) => viewer.panStep(...PAN[event.key]) },
    { keys: ["1–9"], codes: tools.map((t) => t.key), label: "tools",
      run: (event) => viewer.setTool(tools.find((t) => t.key === event.key).id) },
    { keys: ["PgUp", "PgDn"], codes: ["PageUp", "PageDown"], label: "CT slice (or Shift+wheel)", ct: true,
      run: (event) => viewer.stepSlice(event.key === "PageDown" ? 1 : -1) },
    { keys: ["M"], label: "CT MIP on/off", ct: true, run: () => viewer.setMip(viewer.index !== null) },
    { keys: ["A"], label: "CT axis", ct: true, run: () => viewer.setAxis(nextAxis(viewer.axis)) },
  ];
}

// Which way each arrow looks across the image, as scrolling does: → shows
// more of the right, so the image moves left.
const PAN = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };

const AXES = ["axial", "coronal", "sagittal"];
const nextAxis = (axis) => AXES[(AXES.indexOf(axis) + 1) % AXES.length];

/** Listen on the document; typing in a field, or a modifier held, is left alone. */
export function bindShortcuts(table, { enabled }) {
  const byKey = new Map();
  for (const entry of table) {
    for (const code of entry.codes ?? entry.keys.map((k) => k.toLowerCase())) byKey.set(code, entry);
  }
  document.addEventListener("keydown", (event) => {
    if (!enabled() || event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    if (ownsKey(event.target, event.key)) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    const entry = (event.shiftKey && byKey.get(`Shift+${key}`)) || byKey.get(key);
    if (!entry) return;
    event.preventDefault(); // arrows and PageUp/PageDown would otherwise scroll the page
    entry.run(event);
  });
}

// Keys a focused control uses itself: everything while typing in a field or
// choosing in a list; the arrows and PageUp/PageDown on a slider or checkbox,
// whose letters stay free for shortcuts.
const CONTROL_KEYS = new Set(["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "PageUp", "PageDown", "Home", "End", " "]);
function ownsKey(target, key) {
  if (!(target instanceof Element)) return false;
  if (target.closest("textarea, select, [contenteditable], dialog")) return true;
  if (target.tagName !== "INPUT") return false;
  return ["range", "checkbox", "radio"].includes(target.type) ? CONTROL_KEYS.has(key) : true;
}

/** The visible hint: "C clear · S search · ...". */
export function shortcutHint(table) {
  return table.map((entry) => el("span", { class: `hint${entry.ct ? " ct-only" : ""}` },
    ...entry.keys.flatMap((k, i) => [i ? "/" : "", el("kbd", {}, k)]), ` ${entry.label}`));
}
