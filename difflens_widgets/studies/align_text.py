"""Teach a toy's text encoder what a relation says before its denoiser has to read it: contrastive alignment with
the pool's images, each caption's order-swapped twin as a hard negative (NegCLIP: Yuksekgonul et al., "When and why
vision-language models behave like bags-of-words", ICLR 2023).

    python -m difflens_widgets.studies.align_text --out runs/align-tok --pool runs/pool-rel \\
        --init-from difflens_widgets/toy/model_t5 --steps 900 --threads 2
    python -m difflens_widgets.studies.train --out runs/t5-tok --kind t5-dit --stage unet --pool runs/pool-rel \\
        --init-from runs/align-tok/pipeline --init-step 4825 --lr 1e-3 --batch 64 --text-lr-scale 0 --threads 2

(what made toy-t5's weights of 2026-12-06, from the weights before them: MODEL_CARD_T5.md has the curves.)

Why a stage of its own. Trained jointly through the denoising loss alone, toy-t5's encoder never fused an object
with its side of a relation (:mod:`.binding`: the side probe at 0.45-0.52 on every layer after ~2.7 M samples),
and its pictures put the two objects on the right axis in an order the starting noise decides. The denoising loss
rewards that fusion only once the denoiser reads it, and the denoiser reads it only once it is there. The real
families never faced this: Stable Diffusion's CLIP was trained contrastively on image-text pairs, DeepFloyd IF's and
PixArt's T5 on language, and both are frozen under the denoiser. Here the encoder gets a direct reason: among
in-batch captions *and* the caption with its two objects swapped ("a blue square left of a red circle" for an image
of "a red circle left of a blue square", both with the same words), pick the one that describes the image. Only an
encoder that reads the order can tell the two apart (a colour swap does the same for binding colours to shapes).

The text tower is the encoder itself, read where the denoiser reads it (the kind's ``condition``: T5's last
state after its final norm, CLIP's last hidden state), each token projected; the image tower a small CNN over the
pool's latents, one vector per cell of the DiT's patch grid, each knowing its place. A caption matches an image
token by token (``--match tokens``, FILIP's late interaction, :func:`late_interaction`), so an order swap, which has
the same words, loses only if some token says which object is where: the side must live in tokens a patch's
cross-attention reads (the objects' own, or the relation word's: the :mod:`.binding` side probe, which reads the
objects' words, tells which). (``--match pooled`` is CLIP's one vector per side, the caption mean-pooled: it learns to
tell a caption from its swap without putting the side in any token; measured in the t5 card.) ``--keep`` holds the
encoder's last state near the one it started from, so a denoiser already trained on it still reads the colours and
shapes it knew. ``--train-from-block K`` keeps the embeddings and blocks below K as they were (:func:`freeze_below`),
so whatever the alignment composes is composed above them. Every ``--eval-every`` steps the log gets the side probe
per layer and the held-out swap test: the share of held-out relation images closer to their caption than to its
swap.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..toy.language import noun_phrase
from .train import KINDS, log

SWAPS = ("order_swap", "colour_swap")  # the hard negatives of a caption, one slot each
HELD_OUT_IMAGES = 1000  # the pool's last images (a fifth at most): never trained on, the swap test's images


def hard_negatives(caption: str) -> dict[str, str]:
    """Captions with the words of ``caption`` that say something else about the same image: ``order_swap``, the two
    objects swapped around a relation ("a red circle left of a blue square" → "a blue square left of a red
    circle"), and ``colour_swap``, the two colours swapped between the shapes ("a blue circle left of a red
    square"). An "and" caption has no order to swap (its swap says the same), a one-object caption neither."""
    from ..toy.annotate import parse_caption

    if not caption.strip():
        return {}
    parsed = parse_caption(caption)
    if len(parsed.objects) < 2:
        return {}
    (c1, s1), (c2, s2) = parsed.objects
    first, second = noun_phrase(c1, s1), noun_phrase(c2, s2)
    text = " ".join(caption.lower().split())
    if not (text.startswith(first + " ") and text.endswith(" " + second)):
        raise ValueError(f"not a caption the world writes: {caption!r}")
    link = text[len(first) + 1 : len(text) - len(second) - 1]
    negatives = {}
    if parsed.relation is not None:
        negatives["order_swap"] = f"{second} {link} {first}"
    if c1 and c2 and c1 != c2:
        negatives["colour_swap"] = f"{noun_phrase(c2, s1)} {link} {noun_phrase(c1, s2)}"
    return negatives


class ImageTower(nn.Module):
    """Latents (C × h × w) → unit vectors, (N, P, D). ``pooled``: one vector per image (P = 1), three convolutions down
    to a quarter of the side and the whole map flattened into one linear layer, so it knows where things are (a
    pooled CNN would not). Otherwise one vector per cell of a grid at half the side (P = (size/2)², the DiT's own
    patch grid on the toy's latents), each with a learned position added, for token-wise matching."""

    def __init__(self, channels: int, size: int, dim: int, width: int = 64, pooled: bool = True):
        super().__init__()
        self.pooled = pooled
        last_stride = 2 if pooled else 1
        self.convs = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=last_stride, padding=1),
            nn.GELU(),
        )
        side = size // (2 * last_stride)
        if pooled:
            self.proj = nn.Linear(2 * width * side**2, dim)
        else:
            self.position = nn.Parameter(torch.randn(2 * width, side, side) * 0.02)
            self.proj = nn.Linear(2 * width, dim)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        features = self.convs(latents)
        if self.pooled:
            return F.normalize(self.proj(features.flatten(1)), dim=-1).unsqueeze(1)
        cells = (features + self.position).flatten(2).transpose(1, 2)  # (N, P, 2·width)
        return F.normalize(self.proj(cells), dim=-1)


class TextTower(nn.Module):
    """Token ids → unit vectors and their mask, (N, T, D) and (N, T), plus the encoder's states. The states are read
    where the denoiser reads them and projected; ``pooled``: mean-pooled over the caption's tokens first (T = 1),
    otherwise one vector per token (padding masked)."""

    def __init__(self, kind, encoder: nn.Module, width: int, dim: int, pooled: bool = True):
        super().__init__()
        self.kind, self.encoder, self.pooled = kind, encoder, pooled
        self.proj = nn.Linear(width, dim, bias=False)

    def states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.kind.condition(self.encoder, ids, mask)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        states = self.states(ids, mask)
        if not self.pooled:
            return F.normalize(self.proj(states), dim=-1), mask.bool(), states
        weights = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1)
        vector = F.normalize(self.proj(pooled), dim=-1).unsqueeze(1)
        return vector, torch.ones(vector.shape[:2], dtype=torch.bool, device=vector.device), states


def late_interaction(image: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, pairwise: bool = False):
    """Token-wise similarity (FILIP: Yao et al., ICLR 2022) of images (I, P, D) and texts (J, T, D), mask (J, T):
    the mean, over a caption's tokens, of each token's best cell, averaged with the mean, over cells, of each
    cell's best token. (I, J), or (I,) for ``pairwise`` (image i with text i). With P = T = 1 it is the dot product.

    Why token-wise: an order-swapped caption has the same words, so its tokens can lose to the caption's only if
    each object's tokens match the cells where *that* object is, i.e. if the tokens say where their object goes:
    the fusion of object and side that a patch's cross-attention query in the denoiser can find."""
    if pairwise:
        sims, keep = torch.einsum("ipd,itd->ipt", image, text), mask[:, None, :]
    else:
        sims, keep = torch.einsum("ipd,jtd->ijpt", image, text), mask[None, :, None, :]
    tokens = keep.squeeze(-2).to(sims.dtype)
    text_side = (sims.amax(-2) * tokens).sum(-1) / tokens.sum(-1).clamp(min=1)
    image_side = sims.masked_fill(~keep, -torch.inf).amax(-1).mean(-1)
    return (text_side + image_side) / 2


def negative_tokens(captions: list[str], tokenizer, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Every caption's hard negatives, one slot per kind of :data:`SWAPS`, tokenized as the pipelines tokenize (ids
    and mask, (M, slots, length)), and which of them exist (M, slots); a missing one is the empty caption, masked."""
    texts, valid = [], []
    for caption in captions:
        found = hard_negatives(caption)
        texts += [found.get(swap, "") for swap in SWAPS]
        valid.append([swap in found for swap in SWAPS])
    tokens = tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    shape = (len(captions), len(SWAPS), -1)
    return (
        tokens.input_ids.view(shape).to(device),
        tokens.attention_mask.view(shape).to(device),
        torch.tensor(valid, device=device),
    )


def contrastive_loss(similarity: torch.Tensor, valid: torch.Tensor, same_image, scale) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of B images whose similarity (B, B + B·K) is to the B captions and then to
    every caption's K hard negatives (``valid`` (B·K,): which exist): an image also competes its caption against
    them. ``same_image`` (B, B): pairs drawn from one image (a paired pool says a relation scene both ways), which
    are not negatives of each other."""
    batch = len(similarity)
    target = torch.arange(batch, device=similarity.device)
    off_diagonal = same_image & ~torch.eye(batch, dtype=torch.bool, device=similarity.device)
    to_text = scale * similarity
    to_text = torch.cat(
        [to_text[:, :batch].masked_fill(off_diagonal, -torch.inf), to_text[:, batch:].masked_fill(~valid, -torch.inf)],
        dim=1,
    )
    to_image = to_text[:, :batch].T
    return (F.cross_entropy(to_text, target) + F.cross_entropy(to_image, target)) / 2


@torch.no_grad()
def swap_test(image_tower, text_tower, pool, negatives, rows: torch.Tensor, scale: float) -> dict[str, float | None]:
    """On the images ``rows`` (held out): per kind of :data:`SWAPS`, the share of captions whose image (its
    posterior mean) is closer to them than to that swap of them (chance 0.5)."""
    ids, mask, valid = negatives
    picks = torch.nonzero(torch.isin(pool.images, rows)).flatten()
    closer: dict[str, list[torch.Tensor]] = {swap: [] for swap in SWAPS}
    for start in range(0, len(picks), 512):
        chunk = picks[start : start + 512]
        image = image_tower(pool.mean[pool.images[chunk]] * scale)
        right = late_interaction(image, *text_tower(pool.input_ids[chunk], pool.attention_mask[chunk])[:2], True)
        for slot, swap in enumerate(SWAPS):
            wrong = late_interaction(image, *text_tower(ids[chunk, slot], mask[chunk, slot])[:2], True)
            closer[swap].append((right > wrong)[valid[chunk, slot]])
    shares = {swap: torch.cat(found) for swap, found in closer.items()}
    return {swap: round(found.float().mean().item(), 3) if len(found) else None for swap, found in shares.items()}


class Alignment(nn.Module):
    """The two towers, the learned temperature, and the encoder's starting copy that ``keep`` pulls it toward: the
    whole contrastive model, one module, so a checkpoint is one state dict."""

    def __init__(
        self, kind, encoder: nn.Module, latent_shape: tuple[int, ...], dim: int, keep: float, tokenwise: bool = True
    ):
        super().__init__()
        config = encoder.config
        width = config.d_model if hasattr(config, "d_model") else config.hidden_size
        self.text = TextTower(kind, encoder, width, dim, pooled=not tokenwise)
        self.image = ImageTower(latent_shape[0], latent_shape[1], dim, pooled=not tokenwise)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's starting temperature
        self.reference = copy.deepcopy(encoder).eval().requires_grad_(False)
        self.keep = keep

    def loss(self, latents, ids, mask, negative_ids, negative_mask, valid, same_image) -> torch.Tensor:
        """The contrastive loss of a batch (negatives (B, slots, length)), plus ``keep`` × the mean squared drift
        of the caption tokens' states from where the encoder started."""
        text, text_mask, states = self.text(ids, mask)
        negative, negative_mask, _ = self.text(negative_ids.flatten(0, 1), negative_mask.flatten(0, 1))
        texts, masks = torch.cat([text, negative]), torch.cat([text_mask, negative_mask])
        similarity = late_interaction(self.image(latents), texts, masks)
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        loss = contrastive_loss(similarity, valid.flatten(), same_image, scale)
        if not self.keep:
            return loss
        with torch.no_grad():
            before = self.text.kind.condition(self.reference, ids, mask)
        tokens = mask.unsqueeze(-1).to(states.dtype)
        drift = ((states - before) ** 2 * tokens).sum() / (tokens.sum() * states.shape[-1])
        return loss + self.keep * drift

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        """AdamW: the encoder's trainable part at ``lr``, the new parts (projections, image tower, temperature) at
        3 × ``lr``."""
        encoder = [p for p in self.text.encoder.parameters() if p.requires_grad]
        fresh = [*self.text.proj.parameters(), *self.image.parameters(), self.logit_scale]
        return torch.optim.AdamW([{"params": encoder, "lr": lr}, {"params": fresh, "lr": 3 * lr}], weight_decay=0.01)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="run folder (log, checkpoint, pipeline)")
    parser.add_argument("--pool", required=True, type=Path, help="a pool folder (python -m ...studies.pool)")
    parser.add_argument("--init-from", required=True, type=Path, help="the pipeline folder whose encoder to align")
    parser.add_argument("--kind", choices=tuple(KINDS), default="t5-dit")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4, help="the text encoder's rate (the towers learn at 3×)")
    parser.add_argument("--keep", type=float, default=1.0, help="weight of the pull toward the starting states")
    parser.add_argument("--dim", type=int, default=128, help="the shared embedding's width")
    parser.add_argument(
        "--match", choices=("tokens", "pooled"), default="tokens",
        help="token-wise matching of caption tokens with image cells (FILIP), or one vector each (CLIP)",
    )  # fmt: skip
    parser.add_argument(
        "--train-from-block", type=int, default=0,
        help="freeze the embeddings and the blocks below this one (0: train them all); see freeze_below",
    )  # fmt: skip
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop cleanly (checkpoint + export) after")
    args = parser.parse_args(argv)
    align(args)


def freeze_below(encoder: nn.Module, first_trained: int) -> None:
    """Freeze the token embeddings and blocks ``0 .. first_trained - 1``: only the upper blocks and the final norm
    learn what the alignment teaches. Why: an encoder aligned in every block computes the relation where the
    gradient finds it cheapest (toy-t5's token-aligned encoder: by block 4 of 8, its lens image at layer 4 already
    the final one). Kept frozen, the lower blocks stay the lexical encoder they were, so relations can only be
    composed above them, as in a pretrained encoder whose upper layers were fine-tuned."""
    from ..adapters.encoders import blocks, final_norm

    stack = blocks(encoder)
    if not 0 <= first_trained < len(stack):
        raise ValueError(f"--train-from-block must be in 0..{len(stack) - 1} (the encoder has {len(stack)} blocks)")
    if first_trained == 0:
        return
    encoder.requires_grad_(False)
    for block in stack[first_trained:]:
        block.requires_grad_(True)
    final_norm(encoder).requires_grad_(True)


def align(args) -> Path:
    """Run the alignment the module docstring describes, resuming from ``out/checkpoint.pt`` if there is one;
    writes ``out/pipeline`` (the ``--init-from`` pipeline with the aligned encoder, fp16) and returns it."""
    from safetensors.torch import load_file

    from ..toy.tokenizer import build_tokenizer
    from .binding import binding_probe
    from .pool import load_pool
    from .train import _load_with_tied_weights

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    deadline = started + 60 * args.max_minutes if args.max_minutes else None
    args.out.mkdir(parents=True, exist_ok=True)
    log(args.out, stage="start", args={k: str(v) for k, v in vars(args).items()}, threads=torch.get_num_threads())
    kind, tokenizer = KINDS[args.kind], build_tokenizer()
    encoder = kind.build(tokenizer)[1]
    _load_with_tied_weights(encoder, load_file(args.init_from / "text_encoder" / "model.safetensors"))
    encoder.float()
    freeze_below(encoder, args.train_from_block)
    pool = load_pool(args.pool, tokenizer, torch.device("cpu"))
    negatives = negative_tokens(pool.captions, tokenizer, torch.device("cpu"))
    scale = json.loads((args.init_from / "vae" / "config.json").read_text())["scaling_factor"]
    images = len(pool.mean)
    first_held_out = images - min(HELD_OUT_IMAGES, images // 5)
    trainable = torch.nonzero(pool.images < first_held_out).flatten()
    torch.manual_seed(args.seed)
    tokenwise = args.match == "tokens"
    model = Alignment(kind, encoder, tuple(pool.mean.shape[1:]), args.dim, args.keep, tokenwise=tokenwise)
    opt = model.optimizer(args.lr)
    ckpt, start_step = args.out / "checkpoint.pt", 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        start_step = state["step"]

    def evaluate(step: int) -> None:
        model.eval()
        swaps = swap_test(model.image, model.text, pool, negatives, torch.arange(first_held_out, images), scale)
        side = binding_probe(encoder, tokenizer, count=600)["side"]
        log(args.out, stage="eval", step=step, **swaps, binding_side=side, elapsed_s=round(time.time() - started, 1))
        model.train()

    if start_step == 0:
        evaluate(0)
    running: list[float] = []
    for step in range(start_step, args.steps):
        generator = torch.Generator().manual_seed(args.seed * 7_919 + step)  # a resumed run draws the same batches
        picks = trainable[torch.randint(0, len(trainable), (args.batch,), generator=generator)]
        rows = pool.images[picks]
        loss = model.loss(
            pool.latents(rows, generator, scale), pool.input_ids[picks], pool.attention_mask[picks],
            *(t[picks] for t in negatives), same_image=rows[:, None] == rows[None],
        )  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(loss.item())
        done = step + 1
        out_of_time = deadline is not None and time.time() > deadline
        if done % 50 == 0 or out_of_time:
            temperature = round(1 / model.logit_scale.clamp(max=math.log(100)).exp().item(), 4)
            log(args.out, stage="align", step=done, loss=round(sum(running) / len(running), 4),
                temperature=temperature, elapsed_s=round(time.time() - started, 1))  # fmt: skip
            running = []
        if done % args.eval_every == 0 or done == args.steps or out_of_time:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": done}, ckpt)
            evaluate(done)
        if out_of_time:
            break
    return export(args.out, args.init_from, encoder)


def export(out: Path, init_from: Path, encoder: nn.Module) -> Path:
    """``out/pipeline``: the ``init_from`` pipeline folder with ``encoder`` in place of its text encoder (fp16)."""
    target = out / "pipeline"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(init_from, target)
    copy.deepcopy(encoder).half().save_pretrained(target / "text_encoder", safe_serialization=True)
    log(out, stage="export", exported=str(target))
    return target


if __name__ == "__main__":
    main()
