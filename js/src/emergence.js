// The prompt's own emergence curve (toy model): for each annotator question, the share of seeds judged right at
// each layer, as a small SVG line chart with the selected layer marked.
const SVG = "http://www.w3.org/2000/svg";
const COLOURS = { objects: "#2563eb", colors: "#e4572e", both: "#16a34a", relation: "#9333ea" };
const NAMES = { objects: "objects", colors: "colours", both: "binding", relation: "relation" };

const svg = (tag, attrs = {}, text = "") => {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text) node.textContent = text;
  return node;
};

export function drawEmergence(container, { layers, curves, title }, selected) {
  const width = 300, height = 180, left = 36, right = 8, top = 22, bottom = 32;
  const x = (i) => left + (layers.length > 1 ? (i / (layers.length - 1)) * (width - left - right) : 0);
  const y = (v) => top + (1 - v) * (height - top - bottom);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "dl-emergence-chart", role: "img",
    "aria-label": "share of seeds judged right per layer" });
  chart.append(svg("text", { x: left, y: 14, class: "dl-em-title" },
    title ? `annotator, ${title}: share right` : "annotator: share of seeds right"));
  for (const v of [0, 0.5, 1]) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), class: "dl-em-grid" }));
    chart.append(svg("text", { x: left - 4, y: y(v) + 4, "text-anchor": "end", class: "dl-em-tick" }, v.toFixed(1)));
  }
  const at = layers.indexOf(selected);
  if (at >= 0) chart.append(svg("line", { x1: x(at), x2: x(at), y1: top, y2: y(0), class: "dl-em-selected" }));
  layers.forEach((layer, i) => {
    if (layers.length <= 12 || i % Math.ceil(layers.length / 12) === 0 || i === layers.length - 1) {
      chart.append(svg("text", { x: x(i), y: height - bottom + 14, "text-anchor": "middle", class: "dl-em-tick" }, layer));
    }
  });
  chart.append(svg("text", { x: (left + width - right) / 2, y: height - 4, "text-anchor": "middle", class: "dl-em-axis" },
    "text-encoder layer →"));
  Object.entries(curves).forEach(([question, values], index) => {
    const lift = (index - 1.5) * 2.5; // equal curves (often: objects and colours) stay visible side by side
    const points = values.map((v, i) => (v === null ? null : `${x(i)},${y(v) - lift}`)).filter(Boolean).join(" ");
    const line = svg("polyline", { points, fill: "none", stroke: COLOURS[question] || "#444", "stroke-width": 2,
      "data-question": question });
    line.append(svg("title", {}, `${NAMES[question] || question}: ${values.map((v, i) => `L${layers[i]} ${v ?? "–"}`).join(", ")}`));
    chart.append(line);
  });
  const legend = document.createElement("div");
  legend.className = "dl-em-legend";
  for (const question of Object.keys(curves)) {
    const item = document.createElement("span");
    item.style.color = COLOURS[question] || "#444";
    item.textContent = `— ${NAMES[question] || question}`;
    legend.append(item);
  }
  container.replaceChildren(chart, legend);
}
