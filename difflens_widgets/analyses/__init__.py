"""Analyses built on lens runs: panels side by side, cosine similarities, raw vs tuned, the training tracker and
the grid/GIF exports."""
