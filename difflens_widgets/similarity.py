"""Cosine-similarity analyses of lens embeddings (what the dashboard's heatmaps show).

What is compared, precisely: the *lens embedding* of a layer, i.e. the vector the diffusion model would be
conditioned on (the encoder's final norm applied to that layer's hidden state, unless the run used
``final_norm=False``). Only real positions are used: the start token, the prompt's tokens and the first end token;
padding positions after it are excluded. The "pooled" prompt representation is the first end-of-text position,
which is where a causal CLIP encoder pools (it is the only position that has seen the whole prompt).
"""

from __future__ import annotations

import json

import numpy as np

from .results import LensResult

END_TOKENS = ("<|endoftext|>", "</s>")


def real_positions(tokens: list[str]) -> int:
    """Number of non-padding positions: everything up to and including the first end token."""
    for i, tok in enumerate(tokens):
        if i > 0 and tok in END_TOKENS:
            return i + 1
    return len(tokens)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def token_layer_similarity(result: LensResult) -> tuple[np.ndarray, list[str], list[int]]:
    """cos(token t at layer l, token t at the last computed layer): array (tokens × layers), token labels, layers."""
    n = real_positions(result.tokens)
    layers = result.layers
    final = _unit(result.embeddings[layers[-1]][:n])
    sims = np.stack([(_unit(result.embeddings[l][:n]) * final).sum(-1) for l in layers], axis=1)
    return sims, [t.replace("</w>", "") for t in result.tokens[:n]], layers


def layer_layer_similarity(result: LensResult) -> tuple[np.ndarray, list[int]]:
    """cos(pooled embedding at layer i, at layer j) for the run's layers: array (layers × layers), layers."""
    pooled_at = real_positions(result.tokens) - 1
    vectors = _unit(np.stack([result.embeddings[l][pooled_at] for l in result.layers]))
    return vectors @ vectors.T, result.layers


def raw_tuned_similarity(raw: LensResult, tuned: LensResult) -> tuple[np.ndarray, list[str], list[int]]:
    """cos(raw lens embedding, tuned lens embedding) per token and layer: where did tuning move the
    representation? Both results must share prompt and layers."""
    if raw.tokens != tuned.tokens or raw.layers != tuned.layers:
        raise ValueError("raw and tuned results must come from the same prompt, tokenizer and layers")
    n = real_positions(raw.tokens)
    sims = np.stack([(_unit(raw.embeddings[l][:n]) * _unit(tuned.embeddings[l][:n])).sum(-1) for l in raw.layers],
                    axis=1)
    return sims, [t.replace("</w>", "") for t in raw.tokens[:n]], raw.layers


def _token_heatmap(sims, tokens, layers, title: str, hover: str):
    import plotly.graph_objects as go

    labels = [f"{i}:{t}" for i, t in enumerate(tokens)]
    fig = go.Figure(go.Heatmap(z=sims, x=layers, y=labels, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
                               hovertemplate=f"token %{{y}}<br>layer %{{x}}<br>{hover} %{{z:.3f}}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="layer", yaxis=dict(autorange="reversed"),
                      margin=dict(l=90, r=10, t=40, b=40), height=320)
    return fig


def heatmap_figures(result: LensResult, tuned: LensResult | None = None) -> dict:
    """Plotly figures (as JSON-ready dicts) of the analyses; hovering shows the exact value, x is the layer.
    With ``tuned``, a third figure compares raw and tuned per token and layer."""
    import plotly.graph_objects as go

    token_fig = _token_heatmap(*token_layer_similarity(result), "token at layer l vs the same token at the last layer",
                               "cos to last layer")
    matrix, layers = layer_layer_similarity(result)
    layer_fig = go.Figure(go.Heatmap(
        z=matrix, x=layers, y=layers, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
        hovertemplate="layer %{y} vs layer %{x}<br>cos %{z:.3f}<extra></extra>",
    ))
    layer_fig.update_layout(title="pooled prompt embedding, layer × layer", xaxis_title="layer",
                            yaxis_title="layer", margin=dict(l=50, r=10, t=40, b=40), height=320)
    figures = {"tokens": token_fig, "layers": layer_fig}
    if tuned is not None:
        figures["tuned"] = _token_heatmap(*raw_tuned_similarity(result, tuned), "raw vs tuned, per token and layer",
                                          "cos raw↔tuned")
    return {name: json.loads(fig.to_json()) for name, fig in figures.items()}
