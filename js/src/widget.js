// anywidget entry point. One small bundle (no plotly, no CDN: works offline) serves every widget: the
// LensDashboard, the TrainingView (view = "training"), the SweepView (view = "sweep") and the DenoiserView
// (view = "denoiser").
import { createDashboard } from "./dashboard.js";
import { createTrainingView } from "./training.js";
import { createSweepView } from "./sweep.js";
import { createDenoiserView } from "./denoiser.js";

const VIEWS = { training: createTrainingView, sweep: createSweepView, denoiser: createDenoiserView };

export default {
  render({ model, el }) {
    const create = VIEWS[model.get("view")] || createDashboard;
    return create({ model, el });
  },
};
