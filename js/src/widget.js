// anywidget entry point. One small bundle (no plotly, no CDN: works offline) serves every widget: the
// LensDashboard, the TrainingView (view = "training") and the SweepView (view = "sweep").
import { createDashboard } from "./dashboard.js";
import { createTrainingView } from "./training.js";
import { createSweepView } from "./sweep.js";

const VIEWS = { training: createTrainingView, sweep: createSweepView };

export default {
  render({ model, el }) {
    const create = VIEWS[model.get("view")] || createDashboard;
    return create({ model, el });
  },
};
