"""The text encoder's contrastive stage (studies.align_text): its hard negatives, its loss, and a short run on a
small pool that writes a pipeline the lens loads."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKL

import difflens_widgets as dl
from difflens_widgets.adapters.encoders import blocks, final_norm
from difflens_widgets.core.models import TOY_MODEL_DIR
from difflens_widgets.studies import align_text
from difflens_widgets.studies.pool import build_pool

TOY_T5 = TOY_MODEL_DIR.parent / "model_t5"


def test_hard_negatives_swap_the_objects_of_a_relation_and_the_colours_of_a_pair():
    assert align_text.hard_negatives("a red circle left of a blue square") == {
        "order_swap": "a blue square left of a red circle",
        "colour_swap": "a blue circle left of a red square",
    }
    assert align_text.hard_negatives("an orange star to the left of a green cross")["order_swap"] == (
        "a green cross to the left of an orange star"  # the phrase and the articles stay right
    )
    # "and" has no order (its swap says the same thing); one object, or no caption, has nothing to swap
    assert align_text.hard_negatives("a red circle and a blue square") == {
        "colour_swap": "a blue circle and a red square"
    }
    assert align_text.hard_negatives("a yellow triangle under a yellow star") == {
        "order_swap": "a yellow star under a yellow triangle"
    }
    assert align_text.hard_negatives("a red circle") == {} and align_text.hard_negatives("") == {}
    with pytest.raises(ValueError, match="not a shapes-world caption"):
        align_text.hard_negatives("a red circle beside a blue square")


def _similarity(image, texts):
    """Pooled embeddings (N, D) through late interaction (P = T = 1: the dot product)."""
    return align_text.late_interaction(image[:, None], texts[:, None], torch.ones(len(texts), 1, dtype=torch.bool))


def test_the_loss_rewards_the_caption_over_its_swap_and_ignores_what_is_not_a_negative():
    image = torch.eye(3)
    text = torch.eye(3)
    swap = -torch.eye(3)  # each caption's negative points away from its image: clearly wrong
    none = torch.zeros(3, 3, dtype=torch.bool)
    every, no_negative = torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)
    assert _similarity(image, torch.cat([text, swap])).tolist() == torch.cat([text, swap], 1).tolist()
    aligned = align_text.contrastive_loss(_similarity(image, torch.cat([text, swap])), every, none, 50.0)
    assert aligned.item() < 1e-6
    # a negative as close to the image as its caption costs log 2 on that image's side
    confusing = _similarity(image, torch.cat([text, torch.eye(3)]))
    confused = align_text.contrastive_loss(confusing, torch.tensor([True, False, False]), none, 50.0)
    assert confused.item() == pytest.approx(math.log(2) / 2 / 3, rel=1e-4)
    # masked negatives, and captions of the same image (a paired pool), are no competitors
    assert align_text.contrastive_loss(confusing, no_negative, none, 50.0).item() < 1e-6
    twins = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    same = torch.stack([image[0], image[0], image[2]])
    shared = align_text.contrastive_loss(_similarity(same, torch.cat([same, -same])), no_negative, twins, 50.0)
    assert shared.item() < 1e-6


def test_token_wise_matching_tells_a_caption_from_its_swap_only_through_where_its_tokens_point():
    left, right, red, blue = torch.eye(4)
    image = torch.stack([(left + red) / 2**0.5, (right + blue) / 2**0.5])[None]  # two cells: red left, blue right
    mask = torch.ones(1, 2, dtype=torch.bool)
    # tokens that carry their object's side match the image better than the swapped caption's tokens
    caption = torch.stack([(red + left) / 2**0.5, (blue + right) / 2**0.5])[None]
    swapped = torch.stack([(blue + left) / 2**0.5, (red + right) / 2**0.5])[None]
    right_score = align_text.late_interaction(image, caption, mask, pairwise=True)
    assert right_score.item() == pytest.approx(1.0)
    assert right_score.item() > align_text.late_interaction(image, swapped, mask, pairwise=True).item()
    # a bag of words (no side in the tokens) cannot tell them apart
    bag = torch.stack([red, blue])[None]
    assert align_text.late_interaction(image, bag, mask, pairwise=True).item() == pytest.approx(2**-0.5)
    # padding tokens count on neither side; the full matrix agrees with the pairwise scores
    padded = torch.cat([caption, torch.ones(1, 1, 4)], 1)
    with_pad = align_text.late_interaction(image, padded, torch.tensor([[True, True, False]]))
    assert with_pad.shape == (1, 1) and with_pad.item() == pytest.approx(right_score.item())


def test_the_image_tower_knows_where_things_are():
    left, right = torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 16, 16)
    left[..., 4:8, 2:6], right[..., 4:8, 10:14] = 1.0, 1.0
    for pooled, cells in ((True, 1), (False, 64)):
        tower = align_text.ImageTower(channels=4, size=16, dim=8, pooled=pooled)
        a, b = tower(left), tower(right)
        assert a.shape == (1, cells, 8) and a.norm(dim=-1).allclose(torch.ones(1, cells))
        assert not torch.allclose(a, b, atol=1e-3)
    # on an empty image the cells differ only by their learned place
    flat = tower(torch.zeros(1, 4, 16, 16))[0]
    assert not torch.allclose(flat[0], flat[-1], atol=1e-3)


@pytest.mark.slow
def test_a_short_alignment_logs_the_probes_and_writes_a_pipeline_the_lens_runs(tmp_path):
    pool = build_pool(tmp_path / "pool", AutoencoderKL.from_pretrained(TOY_MODEL_DIR / "vae"), scenes=60, seed=3)
    out = tmp_path / "align"
    args = SimpleNamespace(
        out=out, pool=pool, init_from=TOY_T5, kind="t5-dit", steps=2, batch=8, lr=3e-4, keep=1.0, dim=16,
        match="tokens", eval_every=2, seed=0, threads=None, max_minutes=None, train_from_block=5,
    )  # fmt: skip
    target = align_text.align(args)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    checks = [r for r in log if r["stage"] == "eval"]
    assert [c["step"] for c in checks] == [0, 2]
    assert all(len(c["binding_side"]) == 8 and 0 <= c["order_swap"] <= 1 for c in checks)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2
    pipe = dl.load_pipeline(target, device="cpu")
    assert type(pipe).__name__ == "PixArtAlphaPipeline"
    shipped = dl.load_pipeline(TOY_T5, device="cpu")

    def moved(part) -> bool:
        return any(
            not torch.equal(a, b)
            for a, b in zip(part(pipe.text_encoder).parameters(), part(shipped.text_encoder).parameters(), strict=True)
        )

    # blocks 5-7 and the final norm were trained; the embeddings and blocks 0-4 kept; the denoiser is the one it
    # started from
    assert all(moved(lambda e, i=i: blocks(e)[i]) for i in (5, 6, 7)) and moved(final_norm)
    assert not any(moved(lambda e, i=i: blocks(e)[i]) for i in range(5))
    assert not moved(lambda e: e.get_input_embeddings())
    assert all(
        torch.equal(a, b) for a, b in zip(pipe.transformer.parameters(), shipped.transformer.parameters(), strict=True)
    )
    res = dl.Lens(pipe).run("a red circle left of a blue square", seeds=[0], num_inference_steps=2)
    assert res.layers == list(range(9)) and res.image(8).size == (64, 64)


def test_freezing_the_lower_blocks_leaves_only_the_upper_ones_to_learn():
    encoder = dl.load_pipeline(TOY_T5, device="cpu").text_encoder
    align_text.freeze_below(encoder, 6)
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all(".block.6." in n or ".block.7." in n or "final_layer_norm" in n for n in trainable)
    assert any(".block.6." in n for n in trainable) and any("final_layer_norm" in n for n in trainable)
    for bad in (-1, 8):
        with pytest.raises(ValueError, match=r"--train-from-block must be in 0\.\.7 \(the encoder has 8 blocks\)"):
            align_text.freeze_below(encoder, bad)
