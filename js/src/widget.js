// anywidget entry point: the LensDashboard with plotly.js bundled in (no CDN, works offline).
import Plotly from "plotly.js-dist-min";
import { createDashboard } from "./dashboard.js";

export default {
  render({ model, el }) {
    return createDashboard({ model, el, plotly: Plotly });
  },
};
