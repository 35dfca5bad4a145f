// DOM and image helpers shared by the LensDashboard and the TrainingView.

export const EL = (tag, attrs = {}, children = []) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
};

// PNG bytes as anywidget hands them over (a DataView of a binary buffer) or as plain bytes.
export const bytesOf = (png) => (png instanceof DataView ? new Uint8Array(png.buffer, png.byteOffset, png.byteLength) : png);

export class ImageUrls {
  // Object URLs for PNG buffers, keyed by "kind:layer:seed"; revoked when replaced.
  constructor() { this.urls = new Map(); }
  set(kind, frames) {
    for (const [key, url] of this.urls) if (key.startsWith(kind + ":")) { URL.revokeObjectURL(url); this.urls.delete(key); }
    for (const f of frames || []) {
      this.urls.set(`${kind}:${f.layer}:${f.seed}`, URL.createObjectURL(new Blob([bytesOf(f.png)], { type: "image/png" })));
    }
  }
  get(kind, layer, seed) { return this.urls.get(`${kind}:${layer}:${seed}`); }
  clear() { for (const url of this.urls.values()) URL.revokeObjectURL(url); this.urls.clear(); }
}
