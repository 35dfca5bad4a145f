"""What the denoiser knows: probes and sparse autoencoders on its features, per block and timestep (Revelio).

``dl.probe(pipe, images, labels, blocks=..., timesteps=...)`` taps the denoiser (:mod:`.denoiser`) and trains, for
every (block, timestep) and every label set, a **linear probe** (standardised features, multinomial logistic
regression from scikit-learn, a stratified 70/30 split): its held-out accuracy says how much of the property the
state holds, against the chance of always answering the commonest class (``head="conv"``: a small Diff-C-style conv
head on the spatial features instead). ``result.sae(block, t)`` trains a
**k-sparse autoencoder** (TopK: pre-encoder bias, ``k`` active latents of ``expansion × width``, decoder columns of
unit norm) on that state and scores each latent by **label purity** — the share of its top-10 images that carry
its commonest label — next to a baseline of random directions, with the dead-latent share and the reconstruction
error. ``pca_rgb`` maps a spatial feature's first three principal components to RGB (Plug-and-Play style).

The SAE is written here (40 lines) rather than taken from ``overcomplete``: that library depends on torchvision,
timm, OpenCV and scikit-image, and installing torchvision replaces a CPU-only torch with a CUDA build.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core import lifecycle
from .taps import Features, image_features

PURITY_TOP = 10
SAE_REPORT_EVERY = 100  # k-SAE steps between progress reports


# ---- linear probes ---------------------------------------------------------------------------------------------
def require_sklearn() -> None:
    """One clear line when the ``[probe]`` extra is missing, before any model work."""
    import importlib.util

    if importlib.util.find_spec("sklearn") is None:
        raise ImportError("probes need scikit-learn: pip install 'difflens-widgets[probe]'")


def linear_probe(features: np.ndarray, labels, *, seed: int = 0, test_size: float = 0.3) -> tuple[float, float]:
    """(held-out accuracy, chance) of a logistic-regression probe predicting ``labels`` from ``features``."""
    require_sklearn()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    if len(labels) != len(features):
        raise ValueError(f"{len(labels)} labels for {len(features)} images")
    counts = Counter(labels.tolist())
    if len(counts) < 2:
        raise ValueError(f"a probe needs at least two classes; the labels are all {labels[0]!r}")
    stratify = labels if min(counts.values()) >= 2 else None
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=test_size, random_state=seed, stratify=stratify
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x_train, y_train)
    chance = Counter(y_test.tolist()).most_common(1)[0][1] / len(y_test)
    return float(model.score(x_test, y_test)), float(chance)


def conv_probe(
    spatial: np.ndarray, labels, *, seed: int = 0, test_size: float = 0.3, epochs: int = 150, width: int = 32
) -> tuple[float, float]:
    """(held-out accuracy, chance) of a small Diff-C-style head on *spatial* features (images × channels × h × w):
    conv 3×3 → ReLU → conv 3×3 → ReLU → global average → linear, trained with Adam on the same split as
    :func:`linear_probe`. It sees the spatial layout before pooling: shapes as patterns, and — through the zero
    padding at the borders — where a feature sits, which mean-pooled features cannot tell (tested on a planted
    left/right signal). On the toy model a 2×2 pooling grid was tried too: it read position perfectly but
    overfitted shape (0.50 against 0.92 on up1 at t=50, 120 images), so the global average stays."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise ValueError(f"a probe needs at least two classes; the labels are all {labels[0]!r}")
    targets = np.array([classes.index(v) for v in labels])
    counts = Counter(targets.tolist())
    stratify = targets if min(counts.values()) >= 2 else None
    train, test = train_test_split(np.arange(len(targets)), test_size=test_size, random_state=seed, stratify=stratify)
    torch.manual_seed(seed)
    x = torch.as_tensor(spatial, dtype=torch.float32)
    x = (x - x[train].mean(dim=(0, 2, 3), keepdim=True)) / x[train].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    y = torch.as_tensor(targets)
    head = torch.nn.Sequential(
        torch.nn.Conv2d(x.shape[1], width, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(width, width, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(width, len(classes)),
    )
    optimiser = torch.optim.Adam(head.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(head(x[train]), y[train])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        accuracy = float((head(x[test]).argmax(1) == y[test]).float().mean())
    chance = Counter(targets[test].tolist()).most_common(1)[0][1] / len(test)
    return accuracy, float(chance)


# ---- k-sparse autoencoders -------------------------------------------------------------------------------------
class TopKSAE(torch.nn.Module):
    """x̂ = W_dec · TopK(W_enc (x − b_pre) + b_enc) + b_pre, with exactly ``k`` non-zero latents per input
    (Gao et al., 2024; the k-SAE of Revelio)."""

    def __init__(self, width: int, latents: int, k: int):
        super().__init__()
        if not 1 <= k <= latents:
            raise ValueError(f"k must be in 1..{latents} (the number of latents), got {k}")
        self.k = k
        self.pre_bias = torch.nn.Parameter(torch.zeros(width))
        self.encoder = torch.nn.Linear(width, latents)
        self.decoder = torch.nn.Linear(latents, width, bias=False)
        self.decoder.weight.data = self.encoder.weight.data.T.clone()
        self.normalise_decoder()

    def normalise_decoder(self) -> None:
        with torch.no_grad():
            self.decoder.weight /= self.decoder.weight.norm(dim=0, keepdim=True).clamp_min(1e-8)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.encoder(x - self.pre_bias)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.encode(x)
        return self.decoder(codes) + self.pre_bias, codes


@dataclass
class SaeResult:
    block: str
    timestep: int
    k: int
    activations: np.ndarray  # images × latents
    labels: dict[str, list]
    reconstruction_error: float  # ‖x − x̂‖² / ‖x − mean‖², on the standardised features
    purity: dict[str, np.ndarray] = field(default_factory=dict)  # label → per latent (NaN for dead latents)
    random_purity: dict[str, float] = field(default_factory=dict)  # label → mean purity of random directions

    @property
    def dead_share(self) -> float:
        return float((self.activations.max(axis=0) <= 0).mean())

    def top_images(self, latent: int, n: int = PURITY_TOP) -> list[int]:
        """Indices of the images that activate ``latent`` most (only those that activate it at all)."""
        return top_rows(self.activations[:, latent], n)

    def label_of(self, latent: int, label: str) -> str | None:
        top = self.top_images(latent)
        return Counter(self.labels[label][i] for i in top).most_common(1)[0][0] if top else None

    def mean_purity(self, label: str) -> float:
        return float(np.nanmean(self.purity[label]))

    def monosemantic(self, label: str, threshold: float = 0.9) -> list[tuple[int, str, float]]:
        """(latent, its label, purity) of the live latents at least ``threshold`` pure, purest first."""
        rows = [
            (j, self.label_of(j, label), float(p))
            for j, p in enumerate(self.purity[label])
            if p == p and p >= threshold
        ]
        return sorted(rows, key=lambda r: -r[2])


def top_rows(column: np.ndarray, n: int) -> list[int]:
    """The ``n`` rows with the highest scores, highest first, among those scoring above zero."""
    return [int(i) for i in np.argsort(-column, kind="stable")[:n] if column[i] > 0]


def purity_of(scores: np.ndarray, labels: list, top: int = PURITY_TOP) -> np.ndarray:
    """Per column of ``scores`` (images × units): the share of its top images carrying their commonest label."""
    out = np.full(scores.shape[1], np.nan)
    for j in range(scores.shape[1]):
        order = top_rows(scores[:, j], top)
        if order:
            out[j] = Counter(labels[i] for i in order).most_common(1)[0][1] / len(order)
    return out


def train_sae(
    features: np.ndarray,
    labels: dict[str, list],
    *,
    k: int = 32,
    expansion: int = 4,
    steps: int = 2000,
    lr: float = 1e-3,
    seed: int = 0,
    block: str = "",
    timestep: int = 0,
    progress=None,
) -> SaeResult:
    """A k-SAE on ``features`` (images × width), standardised first; purity against every label set.
    ``progress(step, steps, "k-SAE")`` every 100 steps (True cancels: :class:`~..core.lifecycle.Cancelled`)."""
    torch.manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    width = x.shape[1]
    sae = TopKSAE(width, expansion * width, min(k, expansion * width))
    optimiser = torch.optim.Adam(sae.parameters(), lr=lr)
    batch = min(256, len(x))
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        if step % SAE_REPORT_EVERY == 0:
            lifecycle.report(progress, step, steps, "k-SAE")
        rows = torch.randint(0, len(x), (batch,), generator=generator)
        recon, _ = sae(x[rows])
        loss = ((recon - x[rows]) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        sae.normalise_decoder()
    with torch.no_grad():
        recon, codes = sae(x)
        error = float(((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    activations = codes.numpy()
    result = SaeResult(block, timestep, sae.k, activations, labels, error)
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((width, activations.shape[1]))
    random_scores = x.numpy() @ directions
    for name, values in labels.items():
        result.purity[name] = purity_of(activations, values)
        result.random_purity[name] = float(np.nanmean(purity_of(random_scores, values)))
    return result


# ---- PCA maps ------------------------------------------------------------------------------------------------
def pca_rgb(spatial: np.ndarray, size: int = 128) -> Image.Image:
    """One image's spatial feature (channels × h × w) as RGB: its first three principal components over positions,
    each stretched to 0..255 (Plug-and-Play's feature visualisation)."""
    channels, height, width = spatial.shape
    flat = spatial.reshape(channels, -1).T
    flat = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    comps = flat @ vt[:3].T
    if comps.shape[1] < 3:
        comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
    low, high = comps.min(0), comps.max(0)
    rgb = (comps - low) / np.where(high > low, high - low, 1)
    image = Image.fromarray((rgb.reshape(height, width, 3) * 255).astype(np.uint8))
    return image.resize((size, size * height // width), Image.NEAREST)


# ---- the result ------------------------------------------------------------------------------------------------
@dataclass
class ProbeResult:
    """Probe accuracy per label as a block × timestep table, the features behind it, and k-SAEs on demand."""

    blocks: list[str]
    timesteps: list[int]
    labels: dict[str, list]
    accuracy: dict[str, np.ndarray]  # label → blocks × timesteps
    chance: dict[str, float]
    features: Features
    _saes: dict = field(default_factory=dict, repr=False)

    def table(self, label: str) -> str:
        head = "| block | " + " | ".join(f"t={t}" for t in self.timesteps) + " |"
        rows = [head, "|---|" + "---|" * len(self.timesteps)]
        for b, block in enumerate(self.blocks):
            rows.append(f"| {block} | " + " | ".join(f"{v:.2f}" for v in self.accuracy[label][b]) + " |")
        return "\n".join(rows) + f"\n\nchance (commonest class): {self.chance[label]:.2f}"

    def figure(self, label: str | None = None):
        import plotly.graph_objects as go

        label = label or next(iter(self.accuracy))
        fig = go.Figure(
            go.Heatmap(
                z=self.accuracy[label],
                x=[f"t={t}" for t in self.timesteps],
                y=self.blocks,
                zmin=self.chance[label],
                zmax=1,
                colorscale="Viridis",
                colorbar=dict(title="accuracy"),
                hovertemplate="block %{y}<br>%{x}<br>accuracy %{z:.3f}<extra></extra>",
            )
        )
        fig.update_layout(
            title=f"linear probe for {label!r}: held-out accuracy (chance {self.chance[label]:.2f})",
            xaxis_title="timestep (noise level)",
            yaxis_title="denoiser block",
            height=360,
        )
        return fig

    def write_html(self, path: str | Path) -> Path:
        """Every label's heatmap in one standalone page (plotly inlined once: no network)."""
        parts = [
            self.figure(label).to_html(full_html=False, include_plotlyjs=(i == 0))
            for i, label in enumerate(self.accuracy)
        ]
        path = Path(path)
        path.write_text(
            "<!doctype html><html><head><meta charset='utf-8'><title>Denoiser probes</title></head>"
            "<body style='font-family:system-ui,sans-serif'>" + "".join(parts) + "</body></html>",
            encoding="utf-8",
        )
        return path

    def sae(
        self, block: str, timestep: int, *, k: int = 32, expansion: int = 4, steps: int = 2000, progress=None
    ) -> SaeResult:
        key = (block, timestep, k, expansion, steps)
        if key not in self._saes:
            self._saes[key] = train_sae(
                self.features.matrix(block, timestep),
                self.labels,
                k=k,
                expansion=expansion,
                steps=steps,
                block=block,
                timestep=timestep,
                progress=progress,
            )
        return self._saes[key]

    def save(self, folder: str | Path) -> Path:
        """``probe.json`` (tables, labels) and ``features.npz`` (pooled features), reloadable with :meth:`load`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "blocks": self.blocks,
            "timesteps": self.timesteps,
            "labels": self.labels,
            "accuracy": {k: v.tolist() for k, v in self.accuracy.items()},
            "chance": self.chance,
        }
        (folder / "probe.json").write_text(json.dumps(meta, indent=1))
        np.savez_compressed(folder / "features.npz", **{f"{b}@{t}": v for (b, t), v in self.features.pooled.items()})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ProbeResult:
        folder = Path(folder)
        meta = json.loads((folder / "probe.json").read_text())
        with np.load(folder / "features.npz") as data:
            pooled = {(key.rsplit("@", 1)[0], int(key.rsplit("@", 1)[1])): data[key] for key in data.files}
        features = Features(meta["blocks"], meta["timesteps"], pooled)
        return cls(
            meta["blocks"],
            meta["timesteps"],
            meta["labels"],
            {k: np.asarray(v) for k, v in meta["accuracy"].items()},
            meta["chance"],
            features,
        )


def probe(
    pipe,
    images,
    labels: dict[str, list] | None = None,
    *,
    blocks=None,
    timesteps=(50, 250, 500, 750),
    seed: int = 0,
    keep_spatial: bool = False,
    head: str = "linear",
    progress=None,
) -> ProbeResult:
    """Probe the denoiser of ``pipe`` for every label set, at every (block, timestep).

    ``head="linear"`` (default): logistic regression on mean-pooled features; ``head="conv"``: the Diff-C-style
    head of :func:`conv_probe` on the spatial features (slower; keeps them).

    ``images``: a list of PIL images with ``labels`` ({name: one label per image}), or an int ``n`` to draw ``n``
    single coloured objects from the toy world (labels: color, shape, size, side).

    ``progress(done, total, what)`` hears of the taps ("taps") and then every probe fitted ("probes"); True cancels
    (:class:`~difflens_widgets.core.lifecycle.Cancelled`)."""
    if isinstance(images, int):
        from ..toy.world import world_probe_set

        images, world_labels = world_probe_set(images, seed=seed)
        labels = {**world_labels, **(labels or {})}
    if not labels:
        raise ValueError("give labels: {name: one label per image}, e.g. {'color': ['red', 'blue', ...]}")
    for name, values in labels.items():
        if len(values) != len(images):
            raise ValueError(f"label set {name!r} has {len(values)} labels for {len(images)} images")
    if head not in ("linear", "conv"):
        raise ValueError(f"head must be 'linear' or 'conv', got {head!r}")
    features = image_features(pipe, images, timesteps, blocks, seed=seed, keep_spatial=keep_spatial or head == "conv",
                              progress=progress)  # fmt: skip
    accuracy, chance = {}, {}
    fits = len(labels) * len(features.blocks) * len(features.timesteps)
    for number, (name, values) in enumerate(labels.items()):
        table = np.zeros((len(features.blocks), len(features.timesteps)))
        for b, block in enumerate(features.blocks):
            for i, t in enumerate(features.timesteps):
                if head == "conv":
                    table[b, i], chance[name] = conv_probe(features.spatial[(block, t)], values, seed=seed)
                else:
                    table[b, i], chance[name] = linear_probe(features.matrix(block, t), values, seed=seed)
                lifecycle.report(progress, (number * len(features.blocks) + b) * len(features.timesteps) + i + 1,
                                 fits, "probes")  # fmt: skip
        accuracy[name] = table
    return ProbeResult(
        features.blocks, features.timesteps, {k: list(v) for k, v in labels.items()}, accuracy, chance, features
    )
