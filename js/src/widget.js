// anywidget entry point, plotly.js bundled in (no CDN, works offline). One bundle serves both widgets:
// the LensDashboard and the TrainingView (whose model says view = "training").
import Plotly from "plotly.js-dist-min";
import { createDashboard } from "./dashboard.js";
import { createTrainingView } from "./training.js";

export default {
  render({ model, el }) {
    const create = model.get("view") === "training" ? createTrainingView : createDashboard;
    return create({ model, el, plotly: Plotly });
  },
};
