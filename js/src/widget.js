// anywidget entry point. One small bundle (no plotly, no CDN: works offline) serves both widgets: the
// LensDashboard and the TrainingView (whose model says view = "training").
import { createDashboard } from "./dashboard.js";
import { createTrainingView } from "./training.js";

export default {
  render({ model, el }) {
    const create = model.get("view") === "training" ? createTrainingView : createDashboard;
    return create({ model, el });
  },
};
