// Small DOM helpers. Everything the service sends (scan ids, model names,
// explanations, notes) goes into the page as text, never as HTML, so a
// crafted scan or note cannot inject markup.

const SVG_NS = "http://www.w3.org/2000/svg";

/** Create an element: el("li", {class: "x", onclick: fn}, "text", child...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

/** The same for SVG elements (they need their namespace). */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** A stored UTC time as the operator's local time: "14:03:22", with the date if not today. */
export function localTime(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return iso;
  const time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  const today = new Date().toDateString() === when.toDateString();
  return today ? time : `${when.toLocaleDateString()} ${time}`;
}

/** Scan ids can be long (sha256:..., DICOM UIDs): a short form for lists, the whole one in a tooltip. */
export function shortId(id) {
  const bare = id.startsWith("sha256:") ? id.slice(7) : id;
  return bare.length > 16 ? `${bare.slice(0, 8)}…${bare.slice(-6)}` : bare;
}

/** Words for the operator: "high_penetration" -> "high penetration". */
export const words = (name) => String(name ?? "").replaceAll("_", " ");

/**
 * The page's error banner (#banner, #banner-text, #banner-close): returns
 * showError(message), which shows the message for ten seconds.
 */
export function errorBanner() {
  let timer = null;
  $("#banner-close").addEventListener("click", () => ($("#banner").hidden = true));
  return (message) => {
    $("#banner-text").textContent = message;
    $("#banner").hidden = false;
    clearTimeout(timer);
    timer = setTimeout(() => ($("#banner").hidden = true), 10000);
  };
}
