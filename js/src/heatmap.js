// A small heatmap drawn with the DOM (a CSS grid of cells), replacing the 4.7 MB plotly.js bundle: colour scale
// fitted to the data and shown as a bar, the selected column (layer or training step) outlined, the exact value on
// hover, a click on a cell selects its column.
//
// spec = { title, x: [...], y: [...], z: [[row of y][column of x]], zmin?, zmax?, scale, x_title, y_title,
//          y_selectable }  — written by difflens_widgets.similarity.heatmap_specs (or the TrainingView); without
//          zmin/zmax the range is the data's own.
import { EL } from "./common.js";

// viridis, five stops: perceptually even, readable when projected and in grey
const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

export function colourRgb(value, zmin, zmax) {
  const span = zmax - zmin;
  const t = span > 0 ? Math.min(1, Math.max(0, (value - zmin) / span)) : 0.5;
  const pos = t * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(pos));
  const f = pos - i;
  return STOPS[i].map((c, k) => Math.round(c + f * (STOPS[i + 1][k] - c)));
}

export const colour = (value, zmin, zmax) => `rgb(${colourRgb(value, zmin, zmax).join(",")})`;

const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3));

export function drawHeatmap(container, spec, { selected = null, onSelect = null, selectedCell = null } = {}) {
  // selected: a column (x) value marked in every row; selectedCell: one {x, y} cell marked alone
  const { x, y, z } = spec;
  const zmin = spec.zmin ?? Math.min(...z.flat());
  const zmax = spec.zmax ?? Math.max(...z.flat());
  const grid = EL("div", { class: "dl-hm-grid", role: "grid" });
  grid.style.gridTemplateColumns = `max-content repeat(${x.length}, minmax(14px, 1fr))`;
  for (let r = 0; r < y.length; r++) {
    const isSelectedRow = spec.y_selectable && selected !== null && y[r] === selected;
    grid.append(EL("div", { class: `dl-hm-label${isSelectedRow ? " dl-hm-marked" : ""}`, text: String(y[r]) }));
    for (let c = 0; c < x.length; c++) {
      const value = z[r][c];
      const marked = (selected !== null && (x[c] === selected || isSelectedRow))
        || (selectedCell !== null && x[c] === selectedCell.x && y[r] === selectedCell.y);
      const cell = EL("div", {
        class: `dl-hm-cell${marked ? " dl-hm-marked" : ""}`, role: "gridcell",
        title: `${spec.y_title} ${y[r]}, ${spec.x_title} ${x[c]}: ${spec.scale} ${fmt(value)}`,
        "data-x": String(x[c]), "data-y": String(y[r]), "data-value": String(value),
      });
      cell.style.background = colour(value, zmin, zmax);
      if (onSelect) cell.addEventListener("click", () => onSelect(x[c], y[r]));
      grid.append(cell);
    }
  }
  grid.append(EL("div"));
  for (const label of x) {
    grid.append(EL("div", { class: `dl-hm-xlabel${label === selected ? " dl-hm-marked" : ""}`, text: String(label) }));
  }
  const bar = EL("div", { class: "dl-hm-bar" });
  bar.style.background = `linear-gradient(to right, ${[0, 0.25, 0.5, 0.75, 1].map(
    (t) => colour(zmin + t * (zmax - zmin), zmin, zmax)).join(", ")})`;
  const scale = EL("div", { class: "dl-hm-scale" }, [
    EL("span", { class: "dl-hm-min", text: fmt(zmin) }), bar, EL("span", { class: "dl-hm-max", text: fmt(zmax) }),
    EL("span", { class: "dl-hm-scale-title", text: spec.scale }),
  ]);
  container.replaceChildren(
    EL("div", { class: "dl-hm-title", text: spec.title }),
    EL("div", { class: "dl-hm-axes" }, [EL("div", { class: "dl-hm-ytitle", text: spec.y_title }), grid]),
    EL("div", { class: "dl-hm-xtitle", text: `${spec.x_title} →` }),
    scale,
  );
}
