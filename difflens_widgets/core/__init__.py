"""The engine: option checks and the option registry, the resolved run, the Lens itself, its results, memory
planning and model loading. Nothing here imports analyses, sweeps, the denoiser side, widgets or the toy world."""
