// The image viewer: one rendering of the scan (the service draws it, without
// boxes), zoom and pan, the alert boxes drawn over it, and CT slicing.
//
// The image and an SVG overlay sit together in one "stage" sized in the
// image's own pixels; zoom and pan are a single CSS transform on the stage.
// The boxes are therefore drawn in image pixel coordinates, exactly as the
// result JSON gives them, and follow every zoom and pan without recomputing.

import { api } from "./api.js";
import { SEVERITY_COLOUR, CT_SHAPE_AXIS, boxInView, boxCentreSlice } from "./boxes.js";
import { el, svg, $, $$, words } from "./dom.js";

/** The rendering tools (nii.calibrate.render.TOOLS) with the operator's names. */
export const TOOLS = [
  { id: "colour", label: "Material colour", key: "1", ct: false },
  { id: "grey", label: "Greyscale", key: "2", ct: true },
  { id: "inverse", label: "Inverse", key: "3", ct: true },
  { id: "high_penetration", label: "High penetration", key: "4", ct: false },
  { id: "low_penetration", label: "Low penetration", key: "5", ct: false },
  { id: "organic_only", label: "Organic only", key: "6", ct: false },
  { id: "inorganic_only", label: "Inorganic only", key: "7", ct: false },
  { id: "edge", label: "Edge enhance", key: "8", ct: false },
  { id: "window", label: "Density window", key: "9", ct: true },
];

// The density window's range and starting values: attenuation for
// projection scans (0 = air; the renderer's scale tops out at 16), and
// Hounsfield units for CT.
const WINDOW = {
  projection: { min: 0, max: 10, step: 0.05, lo: 0.5, hi: 4, unit: "" },
  ct: { min: -1100, max: 3100, step: 10, lo: -200, hi: 2000, unit: " HU" },
};

const MIN_ZOOM_OF_FIT = 0.25; // may zoom out to a quarter of "fit to view"
const MAX_ZOOM = 64; // screen pixels per image pixel
const PAN_STEP = 0.1; // Shift+arrow moves the view by this share of its size
const WHEEL_RATE = 0.0015; // zoom factor per wheel delta unit: exp(-delta * rate)

export class Viewer {
  /**
   * @param {HTMLElement} root the viewer section of index.html
   * @param {{onError: (message: string) => void, onChange: () => void}} hooks
   */
  constructor(root, { onError, onChange }) {
    this.root = root;
    this.onError = onError;
    this.onChange = onChange ?? (() => {});
    this.viewport = $("#viewport", root);
    this.stage = $("#stage", root);
    this.image = $("#scan-image", root);
    this.overlay = $("#overlay", root);
    this.emptyNote = $("#viewport-empty", root);

    this.scan = null; // ScanPublic
    this.result = null; // result JSON or null
    // The operator's tool, kept per kind: CT has fewer tools, and coming back
    // from a CT scan should not lose the tool chosen for X-ray images.
    this.tools = { projection: "colour", ct: "grey" };
    this.windows = { projection: [WINDOW.projection.lo, WINDOW.projection.hi], ct: [WINDOW.ct.lo, WINDOW.ct.hi] };
    this.showBoxes = true;
    this.highlighted = null; // alert id
    this.axis = "axial";
    this.index = null; // CT slice along the axis; null = maximum-intensity projection
    this.volume = null; // CT (z, y, x) shape, from the result or learnt from the images
    this.size = null; // [width, height] of the image shown
    this.view = { scale: 1, x: 0, y: 0 };
    this.loading = null; // AbortController of the image request in flight
    this.objectUrl = null;

    this.buildToolbar();
    this.bindPointer();
    new ResizeObserver(() => this.size && this.keepInView()).observe(this.viewport);
  }

  get isCt() {
    return this.scan?.kind === "ct_volume";
  }

  get tool() {
    return this.tools[this.isCt ? "ct" : "projection"];
  }

  set tool(tool) {
    this.tools[this.isCt ? "ct" : "projection"] = tool;
  }

  // -- the scan shown ---------------------------------------------------------------------------------------------

  /** Show another scan: fit it to the view; the tool and window stay as the operator left them. */
  show(scan, result) {
    const changed = scan.scan_id !== this.scan?.scan_id;
    this.scan = scan;
    this.result = result;
    if (changed) {
      this.size = null;
      this.highlighted = null;
      this.axis = "axial";
      this.index = null; // CT opens on the MIP, which shows every box
      this.volume = result?.image_shape?.length === 3 ? result.image_shape : null;
      // Never leave the last bag's image up under this scan's details, even for a moment.
      this.stage.hidden = true;
      delete this.viewport.dataset.view;
      this.note("Loading the image…");
      this.syncControls();
      this.load();
      if (this.isCt && !this.volume) this.learnVolume();
    } else {
      // The same scan changed (analysed, decided): new boxes, same view.
      if (!this.volume && result?.image_shape?.length === 3) this.volume = result.image_shape;
      this.syncControls();
      this.drawBoxes();
    }
  }

  clear() {
    this.loading?.abort();
    this.scan = this.result = this.size = null;
    this.image.removeAttribute("src");
    this.overlay.replaceChildren();
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
    this.objectUrl = null;
    this.stage.hidden = true;
    this.note("Select a scan from the queue.");
    delete this.viewport.dataset.view;
    this.syncControls();
  }

  /** A line in the middle of the empty viewport (nothing to show, or not yet). */
  note(text) {
    this.emptyNote.textContent = text;
    this.emptyNote.hidden = !text;
  }

  /** The image request for what is chosen now. */
  imageParams() {
    const params = { tool: this.tool };
    if (this.tool === "window") params.window = this.windows[this.isCt ? "ct" : "projection"].join(",");
    if (this.isCt) {
      params.axis = this.axis;
      if (this.index !== null) params.index = this.index;
    }
    return params;
  }

  /** Fetch and show the rendering; a newer request cancels an older one (fast slice scrolling). */
  async load() {
    if (!this.scan) return;
    this.loading?.abort();
    const controller = (this.loading = new AbortController());
    const params = this.imageParams();
    const key = new URLSearchParams(params).toString();
    this.viewport.setAttribute("aria-busy", "true");
    try {
      const blob = await api.image(this.scan.scan_id, params, controller.signal);
      const url = URL.createObjectURL(blob);
      // Decode off-screen first, so the old image stays up until the new one can replace it at once.
      const next = new Image();
      next.src = url;
      await next.decode();
      if (controller.signal.aborted) return URL.revokeObjectURL(url);
      this.image.src = url;
      if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
      this.objectUrl = url;
      const size = [next.naturalWidth, next.naturalHeight];
      const resized = !this.size || size[0] !== this.size[0] || size[1] !== this.size[1];
      this.size = size;
      this.stage.hidden = false;
      this.note("");
      this.stage.style.width = `${size[0]}px`;
      this.stage.style.height = `${size[1]}px`;
      this.overlay.setAttribute("viewBox", `0 0 ${size[0]} ${size[1]}`);
      this.overlay.setAttribute("width", size[0]);
      this.overlay.setAttribute("height", size[1]);
      if (resized) this.fit();
      this.drawBoxes();
      // Tests and tools can tell which rendering is on screen.
      this.viewport.dataset.view = `${this.scan.scan_id}?${key}`;
    } catch (err) {
      if (err.name === "AbortError" || controller.signal.aborted) return;
      if (!this.size) this.note("No image for this scan.");
      this.onError(`The image could not be shown: ${err.message}`);
    } finally {
      if (this.loading === controller) {
        this.loading = null;
        this.viewport.setAttribute("aria-busy", "false");
      }
    }
  }

  /** Before analysis there is no image_shape: two small MIPs give a CT volume's three sizes. */
  async learnVolume() {
    const id = this.scan.scan_id;
    try {
      const [axial, coronal] = await Promise.all(["axial", "coronal"].map((axis) =>
        api.image(id, { tool: "grey", axis }).then((blob) => createImageBitmap(blob))));
      if (this.scan?.scan_id !== id || this.volume) return;
      this.volume = [coronal.height, axial.height, axial.width];
      this.syncControls();
    } catch {
      /* the slice slider stays off; the MIP still shows */
    }
  }

  // -- tools and CT controls --------------------------------------------------------------------------------------

  setTool(tool) {
    const spec = TOOLS.find((t) => t.id === tool);
    if (!spec || (this.isCt && !spec.ct)) return;
    this.tool = tool;
    this.syncControls();
    this.load();
  }

  setWindow(lo, hi) {
    const which = this.isCt ? "ct" : "projection";
    const spec = WINDOW[which];
    lo = Math.min(Math.max(lo, spec.min), spec.max - spec.step);
    hi = Math.max(Math.min(hi, spec.max), lo + spec.step);
    this.windows[which] = [round(lo, spec.step), round(hi, spec.step)];
    this.tool = "window"; // moving the window means the operator wants the window tool
    this.syncControls();
    clearTimeout(this.windowTimer);
    this.windowTimer = setTimeout(() => this.load(), 120); // one request per pause, not per slider step
  }

  toggleBoxes(on = !this.showBoxes) {
    this.showBoxes = on;
    this.syncControls();
    this.drawBoxes();
  }

  setAxis(axis) {
    if (!this.isCt || !(axis in CT_SHAPE_AXIS)) return;
    this.axis = axis;
    if (this.index !== null) this.index = this.middleSlice();
    this.size = null; // another plane: fit it anew
    this.syncControls();
    this.load();
  }

  setMip(on) {
    if (!this.isCt) return;
    this.index = on ? null : this.middleSlice();
    this.syncControls();
    this.load();
  }

  setSlice(index) {
    if (!this.isCt) return;
    const count = this.sliceCount();
    if (count) index = Math.min(Math.max(index, 0), count - 1);
    if (index === this.index) return;
    this.index = Math.max(0, index);
    this.syncControls();
    this.load();
  }

  /** PageUp/PageDown and Shift+wheel: from the MIP, the first step goes to the middle slice. */
  stepSlice(delta) {
    if (!this.isCt) return;
    this.setSlice(this.index === null ? this.middleSlice() : this.index + delta);
  }

  sliceCount() {
    return this.volume?.[CT_SHAPE_AXIS[this.axis]] ?? null;
  }

  middleSlice() {
    const count = this.sliceCount();
    return count ? Math.floor(count / 2) : 0;
  }

  /** Select an alert: outline it, and on CT go to the slice through its middle. */
  focusAlert(alert) {
    this.highlighted = alert.id;
    if (this.isCt && alert.box.length === 6) {
      this.index = boxCentreSlice(alert.box, this.axis);
      this.syncControls();
      this.load();
    } else {
      this.drawBoxes();
    }
  }

  // -- zoom and pan -----------------------------------------------------------------------------------------------

  fitScale() {
    if (!this.size) return 1;
    const { clientWidth: w, clientHeight: h } = this.viewport;
    return Math.min(w / this.size[0], h / this.size[1]) * 0.96;
  }

  /** The whole image, centred (key 0). */
  fit() {
    if (!this.size) return;
    const scale = this.fitScale();
    const { clientWidth: w, clientHeight: h } = this.viewport;
    this.view = { scale, x: (w - this.size[0] * scale) / 2, y: (h - this.size[1] * scale) / 2 };
    this.applyView();
  }

  /** Zoom by `factor` keeping the point (px, py) of the viewport still; the centre by default. */
  zoomBy(factor, px, py) {
    if (!this.size) return;
    const { clientWidth: w, clientHeight: h } = this.viewport;
    px ??= w / 2;
    py ??= h / 2;
    const { scale, x, y } = this.view;
    const next = Math.min(Math.max(scale * factor, this.fitScale() * MIN_ZOOM_OF_FIT), MAX_ZOOM);
    const k = next / scale;
    this.view = { scale: next, x: px - (px - x) * k, y: py - (py - y) * k };
    this.applyView();
  }

  /** Look a tenth of the view further across the image (Shift+arrows): (1, 0) shows more of the right. */
  panStep(right, down) {
    this.panBy(-right * this.viewport.clientWidth * PAN_STEP, -down * this.viewport.clientHeight * PAN_STEP);
  }

  panBy(dx, dy) {
    this.view.x += dx;
    this.view.y += dy;
    this.keepInView();
  }

  /** Never lose the image off screen entirely: keep at least a margin of it visible. */
  keepInView() {
    if (!this.size) return;
    const { clientWidth: w, clientHeight: h } = this.viewport;
    const margin = 48;
    const { scale } = this.view;
    this.view.x = Math.min(Math.max(this.view.x, margin - this.size[0] * scale), w - margin);
    this.view.y = Math.min(Math.max(this.view.y, margin - this.size[1] * scale), h - margin);
    this.applyView();
  }

  applyView() {
    const { scale, x, y } = this.view;
    this.stage.style.transform = `translate(${x}px, ${y}px) scale(${scale})`;
    // Box lines and labels keep their size on screen whatever the zoom.
    this.overlay.style.setProperty("--u", `${1 / scale}px`);
    // From 2x, show the detector's pixels as they are rather than blurred.
    this.stage.classList.toggle("pixelated", scale >= 2);
    $("#zoom-level", this.root).textContent = `${Math.round(scale * 100)} %`;
    this.viewport.dataset.scale = scale.toFixed(4);
  }

  bindPointer() {
    const vp = this.viewport;
    vp.addEventListener("wheel", (event) => {
      if (!this.scan) return;
      event.preventDefault();
      // Chrome turns Shift+wheel into a horizontal scroll, so the delta may be in deltaX.
      const delta = event.deltaY || event.deltaX;
      if (event.shiftKey && this.isCt) {
        this.stepSlice(delta > 0 ? 1 : -1);
        return;
      }
      const box = vp.getBoundingClientRect();
      this.zoomBy(Math.exp(-delta * WHEEL_RATE), event.clientX - box.left, event.clientY - box.top);
    }, { passive: false });

    let drag = null;
    vp.addEventListener("pointerdown", (event) => {
      if (event.button !== 0 || !this.size) return;
      drag = { id: event.pointerId, x: event.clientX, y: event.clientY };
      vp.setPointerCapture(event.pointerId);
      vp.classList.add("dragging");
    });
    vp.addEventListener("pointermove", (event) => {
      if (!drag || event.pointerId !== drag.id) return;
      this.panBy(event.clientX - drag.x, event.clientY - drag.y);
      drag.x = event.clientX;
      drag.y = event.clientY;
    });
    const end = (event) => {
      if (!drag || event.pointerId !== drag.id) return;
      drag = null;
      vp.classList.remove("dragging");
    };
    vp.addEventListener("pointerup", end);
    vp.addEventListener("pointercancel", end);
    vp.addEventListener("dblclick", (event) => {
      const box = vp.getBoundingClientRect();
      this.zoomBy(2, event.clientX - box.left, event.clientY - box.top);
    });
  }

  // -- boxes ------------------------------------------------------------------------------------------------------

  drawBoxes() {
    const shown = [];
    const corners = new Map(); // how many labels already sit at a box corner
    if (this.showBoxes && this.result && this.size) {
      const view = { axis: this.axis, index: this.index };
      for (const alert of this.result.alerts) {
        const rect = boxInView(alert.box, view);
        if (!rect) continue; // a CT slice that does not cut this box
        const [x0, y0, x1, y1] = rect;
        const corner = `${Math.round(x0)},${Math.round(y0)}`;
        const stacked = corners.get(corner) ?? 0;
        corners.set(corner, stacked + 1);
        const label = svg("text", { x: x0, y: y0, class: "box-label", fill: colourOf(alert) },
          `#${alert.id} ${words(alert.class)} ${Math.round(alert.score * 100)}%`);
        label.style.setProperty("--n", stacked);
        const attrs = { x: x0, y: y0, width: Math.max(x1 - x0, 1), height: Math.max(y1 - y0, 1) };
        shown.push(svg("g", { class: `box ${alert.severity}${alert.id === this.highlighted ? " highlighted" : ""}`,
                               dataset: { alert: alert.id } },
          svg("title", {}, `#${alert.id} ${words(alert.class)} ${Math.round(alert.score * 100)}% (${alert.severity})`),
          svg("rect", { ...attrs, class: "box-shadow" }), // dark edge: the line shows on bright and dark scans
          svg("rect", { ...attrs, class: "box-line", stroke: colourOf(alert) }),
          label));
      }
    }
    this.overlay.replaceChildren(...shown);
    this.viewport.dataset.boxes = String(shown.length);
  }

  // -- controls ---------------------------------------------------------------------------------------------------

  buildToolbar() {
    const tools = $("#tools", this.root);
    tools.replaceChildren(...TOOLS.map((tool) =>
      el("button", { type: "button", class: "tool", dataset: { tool: tool.id }, "aria-pressed": "false",
                     title: `${tool.label} (key ${tool.key})`, onclick: () => this.setTool(tool.id) },
        tool.label, el("kbd", {}, tool.key))));

    const lo = $("#window-lo", this.root);
    const hi = $("#window-hi", this.root);
    const onWindow = (event) => {
      const moved = event.target === lo ? "lo" : "hi";
      const [a, b] = [Number(lo.value), Number(hi.value)];
      // Dragging one thumb past the other pushes it along rather than inverting the window.
      if (moved === "lo") this.setWindow(a, Math.max(b, a));
      else this.setWindow(Math.min(a, b), b);
    };
    lo.addEventListener("input", onWindow);
    hi.addEventListener("input", onWindow);

    $("#zoom-in", this.root).addEventListener("click", () => this.zoomBy(1.25));
    $("#zoom-out", this.root).addEventListener("click", () => this.zoomBy(0.8));
    $("#zoom-fit", this.root).addEventListener("click", () => this.fit());
    $("#boxes-toggle", this.root).addEventListener("click", () => this.toggleBoxes());
    $("#ct-axis", this.root).addEventListener("change", (event) => {
      this.setAxis(event.target.value);
      this.viewport.focus({ preventScroll: true }); // hand the keys back to the shortcuts (a list keeps them)
    });
    $("#ct-mip", this.root).addEventListener("change", (event) => this.setMip(event.target.checked));
    $("#ct-slice", this.root).addEventListener("input", (event) => this.setSlice(Number(event.target.value)));
  }

  /** Make every control show the state (one place, so they never disagree). */
  syncControls() {
    for (const button of $$(".tool", this.root)) {
      const spec = TOOLS.find((t) => t.id === button.dataset.tool);
      button.setAttribute("aria-pressed", String(this.tool === spec.id));
      button.disabled = !this.scan || (this.isCt && !spec.ct);
    }
    const which = this.isCt ? "ct" : "projection";
    const spec = WINDOW[which];
    const [lo, hi] = this.windows[which];
    for (const [input, value] of [[$("#window-lo", this.root), lo], [$("#window-hi", this.root), hi]]) {
      Object.assign(input, { min: spec.min, max: spec.max, step: spec.step });
      input.value = value;
      input.disabled = !this.scan;
    }
    $("#window-values", this.root).textContent = `${lo}${spec.unit} – ${hi}${spec.unit}`;
    $("#window-label", this.root).textContent = this.isCt ? "Window (HU)" : "Window (attenuation)";

    const boxes = $("#boxes-toggle", this.root);
    boxes.setAttribute("aria-pressed", String(this.showBoxes));
    boxes.querySelector(".state").textContent = this.showBoxes ? "on" : "off";

    const ct = $("#ct-controls", this.root);
    ct.hidden = !this.isCt;
    if (this.isCt) {
      $("#ct-axis", this.root).value = this.axis;
      $("#ct-mip", this.root).checked = this.index === null;
      const slider = $("#ct-slice", this.root);
      const count = this.sliceCount();
      slider.max = count ? count - 1 : 0;
      slider.value = this.index ?? this.middleSlice();
      slider.disabled = !count;
      $("#ct-slice-label", this.root).textContent = this.index === null
        ? "Maximum-intensity projection (all slices)"
        : `Slice ${this.index + 1} of ${count ?? "?"}`;
    }
    this.onChange();
  }
}

const colourOf = (alert) => SEVERITY_COLOUR[alert.severity] ?? SEVERITY_COLOUR.advisory;

/** `value` to a whole number of `step`s, without float dust (0.1 + 0.2) or -0. */
const round = (value, step) => Number((Math.round(value / step) * step).toFixed(6)) + 0;
