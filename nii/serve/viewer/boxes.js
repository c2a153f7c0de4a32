// Where an alert's box falls in the image on screen, in that image's pixels.
//
// 2D scans: the result's boxes are [x0, y0, x1, y1] in the calibrated
// image's pixels, the same grid as /api/scans/{id}/image, so they are drawn
// as they are. CT: boxes are [x0, y0, z0, x1, y1, z1] in voxels of the
// (slices z, rows y, cols x) volume, ends exclusive. Each view shows two of
// the three axes (what numpy's take/max along one axis leaves):
//   axial    cuts z: x across, y down
//   coronal  cuts y: x across, z down
//   sagittal cuts x: y across, z down

/** Colours match the annotated PNG (nii.annotate.image.SEVERITY_RGB). */
export const SEVERITY_COLOUR = { alarm: "rgb(230, 25, 25)", advisory: "rgb(255, 190, 0)" };

/** Per axis: [across, down, cut] as indices into (x, y, z). */
const CT_VIEW = {
  axial: [0, 1, 2],
  coronal: [0, 2, 1],
  sagittal: [1, 2, 0],
};

/** The axis a CT view cuts, as an index into the (z, y, x) volume shape. */
export const CT_SHAPE_AXIS = { axial: 0, coronal: 1, sagittal: 2 };

/**
 * The rectangle [x0, y0, x1, y1] of `box` in the current view, or null when
 * the view is a CT slice the box does not reach.
 *
 * @param {number[]} box 4 numbers (2D) or 6 (CT)
 * @param {{axis?: string, index?: number|null}} view for CT: the axis, and the slice or null for the MIP
 */
export function boxInView(box, view = {}) {
  if (box.length === 4) return box.slice();
  const lo = box.slice(0, 3); // x0, y0, z0
  const hi = box.slice(3, 6); // x1, y1, z1
  const [across, down, cut] = CT_VIEW[view.axis ?? "axial"];
  // A slice shows only what it cuts; the MIP (index null) shows every box.
  if (view.index !== null && view.index !== undefined) {
    if (!(view.index >= lo[cut] && view.index < hi[cut])) return null;
  }
  return [lo[across], lo[down], hi[across], hi[down]];
}

/** The slice through the middle of a CT box along `axis` (to jump to an alert). */
export function boxCentreSlice(box, axis) {
  const cut = CT_VIEW[axis][2];
  return Math.floor((box[cut] + box[cut + 3] - 1) / 2);
}
