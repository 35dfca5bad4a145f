// A jsdom document and a fake anywidget model, so the front-end logic runs under `node --test`.
import { readFileSync } from "node:fs";
import { JSDOM, VirtualConsole } from "jsdom";

export function setupDom() {
  const dom = new JSDOM("<!doctype html><html><body></body></html>", { pretendToBeVisual: true, virtualConsole: new VirtualConsole() });
  const g = globalThis;
  for (const key of ["window", "document", "Blob", "Image", "HTMLElement", "KeyboardEvent", "MouseEvent", "Event"]) {
    g[key] = dom.window[key];
  }
  let n = 0;
  URL.createObjectURL = () => `blob:fake/${++n}`;
  URL.revokeObjectURL = () => {};
  return dom;
}

// The dashboard's synced traits and their defaults, written from the Python class (LensDashboard.default_state) and
// checked against it by tests/test_frontend.py, so this fake cannot drift from the real widget.
const DASHBOARD_DEFAULTS = JSON.parse(readFileSync(new URL("./dashboard_state.json", import.meta.url), "utf8"));

export class FakeModel {
  constructor(state = {}) {
    this.state = {
      ...DASHBOARD_DEFAULTS, prompt: "a red circle", model_info: { num_layers: 8, tuned: false, family: "toy" }, ...state,
    };
    this.listeners = new Map();
    this.sent = [];
  }
  get(key) { return this.state[key]; }
  set(key, value) { this.state[key] = value; this.emit(`change:${key}`); }
  save_changes() {}
  send(message) { this.sent.push(message); }
  on(event, fn) { if (!this.listeners.has(event)) this.listeners.set(event, new Set()); this.listeners.get(event).add(fn); }
  off(event, fn) { this.listeners.get(event)?.delete(fn); }
  emit(event, ...args) { for (const fn of this.listeners.get(event) || []) fn(...args); }
}

export function frames(layers, seeds) {
  const out = [];
  for (const layer of layers) for (const seed of seeds) out.push({ layer, seed, png: new DataView(new Uint8Array([137, 80, 78, 71]).buffer) });
  return out;
}
