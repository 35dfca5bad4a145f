"""Cosine-similarity analyses of lens embeddings: where in the text encoder does a concept live, and where did
fine-tuning change it?

What is compared, precisely:

* A **lens embedding** is the vector the diffusion model would be conditioned on at layer l: the encoder's own
  final norm applied to ``hidden_states[l]`` (the raw hidden state when ``final_norm=False``, and by default for
  encoders whose pipeline conditions on a raw state, such as SDXL's).
* **Padding is excluded**: only the start token, the prompt's tokens and the first end token take part; positions
  after the first end token are padding.
* **A word** is located by tokenizing it alone and finding those pieces in the prompt (first occurrence). A word of
  several pieces (the toy model reads "xon" as ``x`` + ``on</w>``) is represented by its **last piece**: in a causal
  encoder it is the only piece that has seen the whole word.
* The **pooled** prompt representation is the first end-of-text position, where a causal CLIP encoder pools (the
  only position that has seen the whole prompt).

Each analysis returns a :class:`Similarity`: plain arrays (``values``, ``layers``, ``labels``) and ``figure()`` for
an interactive plotly figure. ``token_layer_similarity``, ``layer_layer_similarity`` and ``raw_tuned_similarity``
compute the same quantities from finished LensResults (what the dashboard's heatmaps show).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import validate as options
from ..core.results import LensResult, readable, shown_span, word_spans


def shown_positions(tokens: list[str], result: LensResult | None = None) -> range:
    """The positions a reader is shown (the user's tokens, start and end included; never padding or a chat
    template's tokens): see :func:`~difflens_widgets.core.results.shown_span`."""
    return shown_span(tokens, result.params if result is not None else None)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def token_layer_similarity(result: LensResult) -> tuple[np.ndarray, list[str], list[int]]:
    """cos(token t at layer l, token t at the last computed layer): array (tokens × layers), token labels, layers."""
    span = shown_positions(result.tokens, result)
    rows = slice(span.start, span.stop)
    layers = result.layers
    final = _unit(result.embeddings[layers[-1]][rows])
    sims = np.stack([(_unit(result.embeddings[l][rows]) * final).sum(-1) for l in layers], axis=1)
    return sims, [readable(result.tokens[p]) for p in span], layers


def layer_layer_similarity(result: LensResult) -> tuple[np.ndarray, list[int]]:
    """cos(pooled embedding at layer i, at layer j) for the run's layers: array (layers × layers), layers."""
    return _pooled_cosines(result.embeddings, result.layers, shown_positions(result.tokens, result)), result.layers


def raw_tuned_similarity(raw: LensResult, tuned: LensResult) -> tuple[np.ndarray, list[str], list[int]]:
    """cos(raw lens embedding, tuned lens embedding) per token and layer: where did tuning move the
    representation? Both results must share prompt and layers."""
    if raw.layers != tuned.layers:
        raise ValueError(f"raw and tuned results must share their layers: {raw.layers} vs {tuned.layers}")
    _check_same_tokens(raw.tokens, tuned.tokens)
    span = shown_positions(raw.tokens, raw)
    sims = _per_token_cosines(raw.embeddings, tuned.embeddings, raw.layers, span)
    return sims, [readable(raw.tokens[p]) for p in span], raw.layers


def _token_heatmap(sims, tokens, layers, title: str, hover: str, raw_labels: bool = False, row_name: str = "token"):
    import plotly.graph_objects as go

    labels = list(tokens) if raw_labels else [f"{i}:{t}" for i, t in enumerate(tokens)]
    fig = go.Figure(
        go.Heatmap(
            z=sims,
            x=layers,
            y=labels,
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            reversescale=True,
            hovertemplate=f"{row_name} %{{y}}<br>layer %{{x}}<br>{hover} %{{z:.3f}}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title="layer",
        yaxis=dict(autorange="reversed"),
        margin=dict(l=90, r=10, t=40, b=40),
        height=320,
    )
    return fig


def heatmap_specs(result: LensResult, tuned: LensResult | None = None) -> dict:
    """What the dashboard draws: the analyses as plain numbers with a colour range fitted to the data (cosines of
    one prompt live in a narrow band; a fixed −1..1 scale would paint them all one colour). With ``tuned``, a third
    map shows how far tuning moved each token, as 1 − cos(raw, tuned), so the changed token stands out."""
    sims, labels, layers = token_layer_similarity(result)
    specs = {
        "tokens": _spec(
            sims, layers, labels, "token at layer l vs the same token at the last layer", "cos to last layer", "token"
        )
    }
    matrix, layers = layer_layer_similarity(result)
    specs["layers"] = _spec(
        matrix, layers, layers, "pooled prompt embedding, layer × layer", "cos", "layer", y_selectable=True
    )
    if tuned is not None:
        sims, labels, layers = raw_tuned_similarity(result, tuned)
        specs["tuned"] = _spec(
            1.0 - sims, layers, labels, "raw vs tuned: how far tuning moved each token", "1 − cos(raw, tuned)", "token"
        )
    return specs


def _spec(
    values: np.ndarray, layers: list[int], rows: list, title: str, scale: str, row_name: str, y_selectable: bool = False
) -> dict:
    z = np.round(np.asarray(values, dtype=np.float64), 4)
    low, high = float(z.min()), float(z.max())
    if high - low < 1e-3:  # a flat map: centre a small range on it rather than divide by zero
        low, high = low - 5e-4, high + 5e-4
    return {
        "title": title,
        "x": [int(l) for l in layers],
        "y": [r if isinstance(r, str) else int(r) for r in rows],
        "z": z.tolist(),
        "zmin": low,
        "zmax": high,
        "scale": scale,
        "x_title": "layer",
        "y_title": row_name,
        "y_selectable": y_selectable,
    }


# ---------------------------------------------------------------------------------------------------------------
# Analyses straight from text encoders (no diffusion): fast enough to run at every layer, every training step
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Similarity:
    """The numbers of one analysis and a plotly figure of them.

    ``values`` is 1-D over ``layers`` (token vs token) or 2-D with one row per entry of ``labels`` (tokens, or
    layers for a layer × layer matrix) and one column per layer.
    """

    values: np.ndarray
    layers: list[int]
    labels: list[str] | None
    title: str
    hover: str = "cos"
    row_name: str = "token"

    def figure(self):
        import plotly.graph_objects as go

        if self.values.ndim == 1:
            fig = go.Figure(
                go.Scatter(
                    x=self.layers,
                    y=self.values,
                    mode="lines+markers",
                    hovertemplate=f"layer %{{x}}<br>{self.hover} %{{y:.4f}}<extra></extra>",
                )
            )
            fig.update_layout(
                title=self.title,
                xaxis_title="layer",
                yaxis_title=self.hover,
                height=320,
                margin=dict(l=60, r=10, t=40, b=40),
            )
            return fig
        return _token_heatmap(
            self.values, self.labels, self.layers, self.title, self.hover, raw_labels=True, row_name=self.row_name
        )


def _lens_of(model):
    from ..core.engine import Lens

    return Lens.of(model)


def word_position(tokens: list[str], pieces: list[str], word: str, prompt: str) -> int:
    """Index of the last piece of the first occurrence of ``word`` among the shown ``tokens``: its ``pieces`` as the
    tokenizer splits the word alone, or else the word the pieces spell in place (a byte-level BPE splits " cat",
    as it stands in a sentence, otherwise than "cat" alone)."""
    span = shown_positions(tokens)
    for start in span[: max(0, len(span) - len(pieces) + 1)]:
        if tokens[start : start + len(pieces)] == pieces:
            return start + len(pieces) - 1
    for text, positions in word_spans(tokens, span):
        if text.lower() == word.strip().lower():
            return positions[-1]
    shown = " ".join(readable(tokens[p]) for p in span)
    raise ValueError(f"{word!r} (tokens {pieces}) is not in the prompt {prompt!r}, whose tokens are: {shown}")


def word_vectors(
    model, prompt: str, word: str, layers: options.LayerSpec = None, final_norm: bool | None = None
) -> tuple[np.ndarray, list[int]]:
    """Lens embedding of ``word`` inside ``prompt`` at each layer: array (layers × width), layers."""
    if not isinstance(word, str) or not word.strip():
        raise ValueError(f"the word to find must be a non-empty string, got {word!r}")
    lens = _lens_of(model)
    from ..adapters.encoders import word_pieces

    pieces = word_pieces(lens.pipe, lens.adapter.spec, word.strip())
    vectors, tokens = lens.embed(prompt, layers, final_norm=final_norm)
    position = word_position(tokens, pieces, word, prompt)
    chosen = sorted(vectors)
    return np.stack([vectors[l][position] for l in chosen]), chosen


def token_similarity(
    model,
    prompt_a: str,
    word_a: str,
    prompt_b: str,
    word_b: str,
    *,
    layers: options.LayerSpec = None,
    final_norm: bool | None = None,
) -> Similarity:
    """cos(lens embedding of ``word_a`` in ``prompt_a``, of ``word_b`` in ``prompt_b``) at every layer.

    ``token_similarity(pipe, "a photo of xon dog", "xon", "a photo of a dog", "dog")`` is the DreamBooth check
    "how close did the new token move to its class word", at every layer rather than only the last.
    """
    a, chosen = word_vectors(model, prompt_a, word_a, layers, final_norm)
    b, _ = word_vectors(model, prompt_b, word_b, layers, final_norm)
    return Similarity(
        (_unit(a) * _unit(b)).sum(-1), chosen, None, f"cos({word_a!r} in {prompt_a!r}, {word_b!r} in {prompt_b!r})"
    )


def token_shift(
    raw, tuned, prompt: str, *, layers: options.LayerSpec = None, final_norm: bool | None = None
) -> Similarity:
    """cos(raw lens embedding, tuned lens embedding) per real token and layer: 1 where tuning left the token's
    representation alone, lower where it moved it. Both models must tokenize ``prompt`` identically."""
    raw_lens, tuned_lens = _lens_of(raw), _lens_of(tuned)
    raw_vecs, raw_tokens = raw_lens.embed(prompt, layers, final_norm=final_norm)
    tuned_vecs, tuned_tokens = tuned_lens.embed(prompt, layers, final_norm=final_norm)
    _check_same_tokens(raw_tokens, tuned_tokens)
    span = shown_positions(raw_tokens)
    chosen = sorted(raw_vecs)
    sims = _per_token_cosines(raw_vecs, tuned_vecs, chosen, span)
    return Similarity(sims, chosen, _labels(raw_tokens, span), f"raw vs tuned per token: {prompt!r}", "cos raw↔tuned")


def layer_similarity(
    model, prompt: str, *, layers: options.LayerSpec = None, final_norm: bool | None = None
) -> Similarity:
    """cos(pooled lens embedding at layer i, at layer j): how fast the prompt's representation settles."""
    vectors, tokens = _lens_of(model).embed(prompt, layers, final_norm=final_norm)
    chosen = sorted(vectors)
    return Similarity(
        _pooled_cosines(vectors, chosen, shown_positions(tokens)),
        chosen,
        [str(l) for l in chosen],
        f"layer × layer: {prompt!r}",
        row_name="layer",
    )


def _per_token_cosines(a: dict, b: dict, layers: list[int], span: range) -> np.ndarray:
    """cos(a[l][t], b[l][t]) for the positions t of ``span`` and every layer l: array (positions × layers)."""
    rows = slice(span.start, span.stop)
    return np.stack([(_unit(a[l][rows]) * _unit(b[l][rows])).sum(-1) for l in layers], axis=1)


def _pooled_cosines(vectors: dict, layers: list[int], span: range) -> np.ndarray:
    """cos between the pooled (last shown) position's vectors of every pair of layers: array (layers × layers)."""
    pooled = _unit(np.stack([vectors[l][span.stop - 1] for l in layers]))
    return pooled @ pooled.T


def _labels(tokens: list[str], span: range | None = None) -> list[str]:
    """``position:token`` for the shown positions (all of ``tokens`` when no span is given)."""
    return [f"{p}:{readable(tokens[p])}" for p in (range(len(tokens)) if span is None else span)]


def _check_same_tokens(raw_tokens: list[str], tuned_tokens: list[str]) -> None:
    if raw_tokens != tuned_tokens:
        raw_real = [raw_tokens[p] for p in shown_positions(raw_tokens)]
        tuned_real = [tuned_tokens[p] for p in shown_positions(tuned_tokens)]
        raise ValueError(
            "raw and tuned models tokenize the prompt differently, so tokens cannot be compared position by "
            f"position: raw {raw_real} vs tuned {tuned_real} (textual inversion adds tokens the raw model lacks)"
        )
