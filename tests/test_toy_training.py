"""Training the toy models: the pool (rendered, encoded and tokenized once), the trainer for both kinds (seeded,
resumable from a checkpoint or from carried weights, time-boxed), the exported pipelines, and the campaign's
packing for a machine whose files come back in pieces."""

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

import difflens_widgets as dl
from difflens_widgets.core.models import TOY_MODEL_DIR
from difflens_widgets.studies import campaign, train
from difflens_widgets.studies.pool import build_pool, load_pool, parse_weights, render_scenes
from difflens_widgets.toy.annotate import parse_caption
from difflens_widgets.toy.tokenizer import build_tokenizer
from difflens_widgets.toy.world import INVERSE_RELATION, Scene, ShapeObject, World, render

TINY_UNET = ["--unet-channels", "32,32,64"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    vae = AutoencoderKL.from_pretrained(TOY_MODEL_DIR / "vae")
    return build_pool(tmp_path_factory.mktemp("pool"), vae, scenes=120, seed=5, paired=True)


def log_of(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_pool_rendering_does_not_depend_on_the_number_of_workers():
    one = render_scenes(1500, seed=2, workers=1)
    two = render_scenes(1500, seed=2, workers=2)
    assert np.array_equal(one[0], two[0]) and one[1] == two[1]
    assert one[0].shape == (1500, 64, 64, 3) and one[0].dtype == np.uint8


def test_a_paired_pool_says_each_relation_scene_both_ways():
    images, rows = render_scenes(200, seed=0, paired=True, weights={"relation": 1.0})
    assert len(rows) == 2 * len(images) == 400
    for (i, first, _), (j, second, _) in zip(rows[::2], rows[1::2]):
        a, b = parse_caption(first), parse_caption(second)
        assert i == j and b.relation == INVERSE_RELATION[a.relation] and b.objects == a.objects[::-1]


def test_pool_draws_are_a_function_of_the_generator(pool_dir, tokenizer):
    pool = load_pool(pool_dir, tokenizer, torch.device("cpu"))
    info = json.loads((pool_dir / "pool.json").read_text())
    assert info["scenes"] == 120 and info["captions"] == len(pool) > 120  # relation scenes said twice
    assert pool.mean.shape == (120, 4, 16, 16) and (pool.std > 0).all()
    a = pool.draw(16, torch.Generator().manual_seed(3), scale=0.9)
    b = pool.draw(16, torch.Generator().manual_seed(3), scale=0.9)
    c = pool.draw(16, torch.Generator().manual_seed(4), scale=0.9)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])
    # every caption is tokenized as the pipelines tokenize it: padded to the tokenizer's length, with its mask
    assert a[1].shape == a[2].shape == (16, tokenizer.model_max_length)
    dropped = pool.draw(64, torch.Generator().manual_seed(0), 0.9, uncond=1.0)
    empty = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    assert (dropped[1] == empty.input_ids).all() and (dropped[2] == empty.attention_mask).all()


def test_a_pool_can_keep_the_relations_that_put_the_first_named_object_first(pool_dir, tokenizer):
    def relation(caption: str) -> str | None:
        return parse_caption(caption).relation if caption else None

    every = load_pool(pool_dir, tokenizer, torch.device("cpu"))
    canonical = load_pool(pool_dir, tokenizer, torch.device("cpu"), relations=("left of", "above"))
    relation_scenes = {i for i, c in zip(every.images.tolist(), every.captions) if relation(c)}
    kept = [(i, c) for i, c in zip(canonical.images.tolist(), canonical.captions) if relation(c)]
    assert {relation(c) for _, c in kept} == {"left of", "above"} and relation_scenes
    assert sorted(i for i, _ in kept) == sorted(relation_scenes)  # each paired scene once, in its canonical phrasing
    others = [c for c in every.captions if not relation(c)]
    assert [c for c in canonical.captions if not relation(c)] == others
    with pytest.raises(ValueError, match="relations must be some of left of, right of, above, below, got sideways"):
        load_pool(pool_dir, tokenizer, torch.device("cpu"), relations=("sideways",))


def test_pool_refuses_a_folder_that_is_not_a_pool(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="not a pool folder.*latents.safetensors"):
        load_pool(tmp_path, tokenizer, torch.device("cpu"))


def test_family_weights_parse():
    assert parse_weights("relation=0.6, colored=0.4") == {"relation": 0.6, "colored": 0.4}
    assert parse_weights(None) is None


def test_min_snr_weights_cap_the_clean_timesteps():
    alphas = train.architecture.train_scheduler().alphas_cumprod
    weights = train.min_snr_weights(alphas, 5.0)
    snr = alphas / (1 - alphas)
    assert torch.allclose(weights[snr <= 5], torch.ones_like(weights[snr <= 5]))
    assert torch.allclose(weights[snr > 5], 5 / snr[snr > 5]) and weights[0] < 0.01
    assert (train.min_snr_weights(alphas, None) == 1).all()


def test_later_timesteps_are_drawn_as_often_as_asked():
    assert train.timestep_weights(1000, 1.0) is None  # uniform: the seeded randint draw, unchanged
    weights = train.timestep_weights(1000, 3.0)
    assert weights.sum().item() == pytest.approx(1.0) and weights[999] == pytest.approx(3 * weights[0])
    draws = torch.multinomial(weights, 40_000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert (draws >= 500).float().mean().item() == pytest.approx(0.75, abs=0.01)  # 3 : 1 on the noisier half
    with pytest.raises(ValueError, match="multiplier must be > 0 and the portion in"):
        train.timestep_weights(1000, 0.0)


def test_the_relation_check_tells_a_flipped_order_from_a_wrong_axis():
    above = render(
        Scene(
            "",
            "relation",
            (ShapeObject("triangle", "red", "large", 20, 16, 11), ShapeObject("circle", "blue", "small", 44, 46, 7)),
        )
    )

    def draws_one_scene(prompts, **_options):  # a "model" that draws the same arrangement whatever it is told
        assert _options["height"] == _options["width"] == train.architecture.IMAGE_SIZE
        return SimpleNamespace(images=[above] * len(prompts))

    prompts = ["a red triangle above a blue circle", "a red triangle below a blue circle"]
    result = train.relation_check(draws_one_scene, SimpleNamespace(generate_kwargs={}), prompts, seeds=(0,))
    assert result["both"] == 1.0 and result["relation_given_both"] == 0.5 and result["axis_given_both"] == 1.0
    left = train.relation_check(
        draws_one_scene, SimpleNamespace(generate_kwargs={}), ["a red triangle left of a blue circle"]
    )
    assert left["relation_given_both"] == left["axis_given_both"] == 0.0
    assert result["order_varies_with_seed"] is None  # one seed: nothing to compare


def test_the_relation_check_says_whether_the_seed_or_the_words_decide_the_order():
    above = Scene("", "relation", (ShapeObject("triangle", "red", "large", 20, 16, 11),
                                   ShapeObject("circle", "blue", "small", 44, 46, 7)))  # fmt: skip
    below = Scene("", "relation", tuple(replace(o, y=62 - o.y) for o in above.objects))

    def noise_decides(prompts, generator, **_options):  # seed 0 draws the triangle on top, seed 1 below
        return SimpleNamespace(images=[render(above if g.initial_seed() == 0 else below) for g in generator])

    def words_decide(prompts, generator, **_options):  # always the triangle on top, wrongly for "below"
        return SimpleNamespace(images=[render(above) for _ in prompts])

    prompts = ["a red triangle above a blue circle", "a red triangle below a blue circle"]
    toy = SimpleNamespace(generate_kwargs={})
    by_noise = train.relation_check(noise_decides, toy, prompts, seeds=(0, 1))
    assert by_noise["relation_given_both"] == 0.5 and by_noise["order_varies_with_seed"] == 1.0
    by_words = train.relation_check(words_decide, toy, prompts, seeds=(0, 1))
    assert by_words["relation_given_both"] == 0.5 and by_words["order_varies_with_seed"] == 0.0
    assert by_words["first_named_first"] == 1.0 and by_noise["first_named_first"] == 0.5  # the triangle is named first


def test_t5_toy_encoder_is_bidirectional_and_as_deep_as_the_clip_one(tokenizer):
    encoder = train.architecture.build_t5_encoder(tokenizer).eval()
    ids = tokenizer(["a red circle left of a blue square", "a red circle right of a blue square"],
                    padding="max_length", max_length=24, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        hidden = encoder(**ids).last_hidden_state
    # "circle" (position 3) sees the relation word after it: a causal encoder's would not change
    assert not torch.allclose(hidden[0, 3], hidden[1, 3])
    assert encoder.config.num_layers == train.architecture.build_text_encoder(tokenizer).config.num_hidden_layers


def common_args(run, pool_dir, kind="clip-unet"):
    tiny = TINY_UNET if kind == "clip-unet" else []
    return ["--out", str(run), "--kind", kind, "--vae-from", str(TOY_MODEL_DIR / "vae"), "--vae-steps", "0",
            "--pool", str(pool_dir), "--batch", "2", "--checkpoint-every", "1", "--export-every", "100",
            *tiny]  # fmt: skip


@pytest.mark.slow
def test_clip_toy_training_is_seeded_and_resumable(tmp_path, pool_dir):
    run = tmp_path / "clip"
    train.main(common_args(run, pool_dir) + ["--steps", "1"])
    train.main(common_args(run, pool_dir) + ["--steps", "2"])
    steps = [r["step"] for r in log_of(run) if r.get("stage") == "unet" and "loss" in r]
    assert steps == [1, 2]  # the second call resumed at step 1 instead of starting over
    again = tmp_path / "again"
    train.main(common_args(again, pool_dir) + ["--steps", "2"])
    first, second = (torch.load(r / "checkpoint.pt", weights_only=True)["denoiser"] for r in (run, again))
    assert all(torch.equal(first[k], second[k]) for k in first)  # resumed == unbroken
    pipe = dl.load_pipeline(run / "pipeline", device="cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.text_encoder.config.num_hidden_layers == 8


def test_the_text_encoder_learns_at_its_own_rate(tmp_path, pool_dir):
    run = tmp_path / "frozen-text"
    train.main(common_args(run, pool_dir) + ["--steps", "1", "--text-lr-scale", "0"])
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    # the EMA twins started as copies: a module that moved now differs from its twin, one that did not equals it
    assert all(torch.equal(state["text"][k], state["ema_text"][k]) for k in state["text"])
    assert not all(torch.equal(state["denoiser"][k], state["ema_denoiser"][k]) for k in state["denoiser"])


@pytest.mark.slow
def test_t5_toy_trains_exports_a_pixart_pipeline_and_resumes_from_carried_weights(tmp_path, pool_dir):
    run = tmp_path / "t5"
    train.main(common_args(run, pool_dir, "t5-dit") + ["--steps", "2", "--eval-every", "2", "--eval-prompts", "2"])
    checks = [r for r in log_of(run) if r.get("stage") == "eval"]
    assert [c["weights"] for c in checks] == ["raw", "ema"] and all(c["images"] == 4 for c in checks)
    assert all(len(c["binding_side"]) == 8 and all(0 <= a <= 1 for a in c["binding_side"]) for c in checks)
    pipe = dl.load_pipeline(run / "pipeline", device="cpu")
    assert type(pipe).__name__ == "PixArtAlphaPipeline" and pipe.text_encoder.config.num_layers == 8
    res = dl.Lens(pipe).run("a red circle left of a blue square", seeds=[0], num_inference_steps=2)
    assert res.layers == list(range(9)) and res.image(8).size == (64, 64)
    # carried to another machine as weights alone: it resumes at their step with a fresh, re-warmed optimizer
    (run / "checkpoint.pt").unlink()
    train.main(common_args(run, pool_dir, "t5-dit") + ["--stage", "unet", "--steps", "3"])
    last = [r for r in log_of(run) if r.get("stage") == "unet" and "loss" in r][-1]
    assert last["step"] == 3 and last["lr"] < 1e-3 / 100


@pytest.mark.slow
def test_time_budget_stops_with_a_checkpoint_and_an_export(tmp_path, pool_dir):
    run = tmp_path / "timed"
    train.main(common_args(run, pool_dir) + ["--steps", "50", "--max-minutes", "0"])
    assert [r["stopped_at"] for r in log_of(run) if "stopped_at" in r] == [1]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 1
    pipe = dl.load_pipeline(run / "pipeline", device="cpu")
    assert tuple(pipe.unet.config.block_out_channels) == (32, 32, 64)


def test_weights_files_round_trip_and_fall_back_to_the_ema(tmp_path):
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    train.save_weights(tmp_path / "w.safetensors", {"text": a, "ema_text": b}, step=7)
    c, d = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    assert train.load_weights(tmp_path / "w.safetensors", {"text": c, "ema_text": d}) == 7
    assert torch.allclose(c.weight, a.weight, atol=1e-3) and torch.allclose(d.weight, b.weight, atol=1e-3)
    campaign.ema_only(tmp_path / "w.safetensors", tmp_path / "ema.safetensors")
    e = torch.nn.Linear(3, 2)
    assert train.load_weights(tmp_path / "ema.safetensors", {"text": e}) == 7  # raw taken from the EMA
    assert torch.allclose(e.weight, b.weight, atol=1e-3)
    with pytest.raises(ValueError, match="no weights for denoiser"):
        train.load_weights(tmp_path / "ema.safetensors", {"denoiser": e})


def test_a_run_starts_from_a_shipped_pipeline_and_then_resumes_its_own(tmp_path):
    from safetensors.torch import load_file

    run, shipped = tmp_path / "t5cpu", TOY_MODEL_DIR.parent / "model_t5"
    train.init_from_pipeline(run, shipped, "t5-dit", step=4825)
    modules = train.build_modules(train.KINDS["t5-dit"], build_tokenizer())
    assert train.load_weights(run / train.WEIGHTS_FILE, modules) == 4825
    denoiser = load_file(shipped / "transformer" / "diffusion_pytorch_model.safetensors")
    for module in ("denoiser", "ema_denoiser"):  # raw and EMA both start from the shipped (EMA) weights
        state = modules[module].state_dict()
        assert all(torch.equal(state[k].half(), v.half()) for k, v in denoiser.items())
    assert torch.equal(modules["ema_text"].shared.weight.half(), modules["ema_text"].encoder.embed_tokens.weight.half())
    assert (run / "vae" / "config.json").exists() and log_of(run)[-1]["stage"] == "init"
    before = (run / train.WEIGHTS_FILE).read_bytes()
    train.save_weights(run / train.WEIGHTS_FILE, {"ema_text": modules["text"]}, step=5000)  # the run went on
    train.init_from_pipeline(run, shipped, "t5-dit", step=4825)  # the same command again: the run's own weights stay
    assert (run / train.WEIGHTS_FILE).read_bytes() != before


def test_a_run_starts_from_the_shipped_clip_toy_but_not_from_an_encoder_of_another_vocabulary(tmp_path):
    """The shipped CLIP toy (version 3) speaks the world's language, so its text encoder loads as well as its U-Net;
    an encoder of version 2's 120-token vocabulary does not fit, and says so."""
    import shutil

    from safetensors.torch import load_file, save_file

    train.init_from_pipeline(tmp_path / "clip", TOY_MODEL_DIR, "clip-unet", step=3332)
    modules = train.build_modules(train.KINDS["clip-unet"], build_tokenizer())
    assert train.load_weights(tmp_path / "clip" / train.WEIGHTS_FILE, modules) == 3332
    shipped_text = load_file(TOY_MODEL_DIR / "text_encoder" / "model.safetensors")
    state = modules["ema_text"].state_dict()
    assert all(torch.equal(state[k].half(), v.half()) for k, v in shipped_text.items())
    older = tmp_path / "v2"
    shutil.copytree(TOY_MODEL_DIR, older)
    tokens = "embeddings.token_embedding.weight"
    save_file(
        {**shipped_text, tokens: shipped_text[tokens][:120].clone()}, older / "text_encoder" / "model.safetensors"
    )
    with pytest.raises(ValueError, match="do not fit the CLIPTextModel"):
        train.init_from_pipeline(tmp_path / "from-v2", older, "clip-unet", step=3000)


def test_a_run_can_take_a_pipelines_denoiser_alone_under_a_fresh_text_encoder(tmp_path):
    """A pipeline's U-Net under a fresh text encoder (how the CLIP toy's version 3 began: version 2's U-Net, a new
    encoder for the new vocabulary): the denoiser is the shipped one, the encoder is not, and a bad ``parts`` says
    what is allowed."""
    from safetensors.torch import load_file

    run = tmp_path / "clip3"
    train.init_from_pipeline(run, TOY_MODEL_DIR, "clip-unet", step=0, parts="denoiser")
    modules = train.build_modules(train.KINDS["clip-unet"], build_tokenizer())
    assert train.load_weights(run / train.WEIGHTS_FILE, modules) == 0
    unet = load_file(TOY_MODEL_DIR / "unet" / "diffusion_pytorch_model.safetensors")
    state = modules["denoiser"].state_dict()
    assert all(torch.equal(state[k].half(), v.half()) for k, v in unet.items())
    embeddings = modules["text"].get_input_embeddings().weight
    shipped = load_file(TOY_MODEL_DIR / "text_encoder" / "model.safetensors")["embeddings.token_embedding.weight"]
    assert embeddings.shape == shipped.shape and not torch.equal(embeddings.half(), shipped)  # fresh, same vocabulary
    assert log_of(run)[-1] == {"stage": "init", "pipeline": str(TOY_MODEL_DIR), "step": 0, "parts": "denoiser"}
    with pytest.raises(ValueError, match="parts must be one of all, denoiser, got 'text'"):
        train.init_from_pipeline(tmp_path / "other", TOY_MODEL_DIR, "clip-unet", step=0, parts="text")


def test_campaign_packs_the_best_run_of_each_kind_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(campaign, "PART_BYTES", 1000)
    specs = [campaign.RunSpec.parse(s) for s in ("a:t5-dit:1e-3:8", "b:t5-dit:3e-4:8", "c:clip-unet:1e-3:8")]
    for spec, relation in zip(specs, (0.2, 0.5, 0.3)):
        folder = tmp_path / spec.name
        folder.mkdir()
        check = {"stage": "eval", "weights": "ema", "relation": relation}
        (folder / "log.jsonl").write_text(json.dumps(check) + "\n")
        train.save_weights(folder / train.WEIGHTS_FILE, {"text": torch.nn.Linear(40, 20)}, step=1)
    packed = campaign.pack(tmp_path, specs, tmp_path / "out")
    names = sorted(p.name for p in packed)
    assert names[0] == "b.weights.safetensors.part00" and "logs.tar.gz" in names
    assert any(n.startswith("c.weights") for n in names) and not any(n.startswith("a.") for n in names)
    assert all(p.stat().st_size <= 1000 for p in packed if ".part" in p.name)
    joined = b"".join((tmp_path / "out" / n).read_bytes() for n in names if n.startswith("b.weights"))
    assert joined == (tmp_path / "b" / "b.weights.safetensors").read_bytes()


def test_campaign_refuses_a_malformed_run(capsys):
    with pytest.raises(ValueError, match="NAME:KIND:LR:BATCH"):
        campaign.RunSpec.parse("t5:t5-dit:fast")
    with pytest.raises(ValueError, match="unknown kind 'vit'; kinds: clip-unet, t5-dit"):
        campaign.RunSpec.parse("t5:vit:1e-3:8")
    with pytest.raises(SystemExit):
        campaign.main(["--out", "x", "--minutes", "1", "--run", "t5:vit:1e-3:8"])
    assert "unknown kind 'vit'" in capsys.readouterr().err  # argparse keeps the message


def test_loader_workers_render_the_same_batches_in_order():
    """Rendering in worker processes (the GPU path) must not change which batch a step sees."""
    plain = list(train.step_batches(seed=3, start=5, stop=9, batch_size=2, workers=0))
    parallel = list(train.step_batches(seed=3, start=5, stop=9, batch_size=2, workers=2))
    assert [b[0] for b in plain] == [b[0] for b in parallel] == [5, 6, 7, 8]
    for (_, images_a, captions_a), (_, images_b, captions_b) in zip(plain, parallel):
        assert captions_a == captions_b and torch.equal(images_a, images_b)
    reference = train.batch_for_step(World(3), 3, 7, 2)
    assert plain[2][2] == reference[1] and torch.equal(plain[2][1], reference[0])


def test_paired_batches_say_each_relation_scene_both_ways():
    images, captions = train.batch_for_step(World(0), 0, 5, 48, paired=True)
    assert images.shape[0] == len(captions) == 48
    pairs = 0
    for k in range(len(captions) - 1):
        first, second = captions[k], captions[k + 1]
        if not first or parse_caption(first).relation is None or not second:
            continue
        a, b = parse_caption(first), parse_caption(second)
        if b.relation == INVERSE_RELATION[a.relation] and b.objects == a.objects[::-1]:
            assert torch.equal(images[k], images[k + 1])  # one scene, said the other way round
            pairs += 1
    assert pairs >= 8


def test_a_run_exports_its_raw_or_its_ema_weights(tmp_path):
    from safetensors.torch import load_file

    run, shipped = tmp_path / "t5cpu", TOY_MODEL_DIR.parent / "model_t5"
    train.init_from_pipeline(run, shipped, "t5-dit", step=4825)
    modules = train.build_modules(train.KINDS["t5-dit"], build_tokenizer())
    train.load_weights(run / train.WEIGHTS_FILE, modules)
    with torch.no_grad():
        modules["text"].encoder.final_layer_norm.weight.fill_(0.5)  # the raw weights moved on; the EMA did not yet
    train.save_weights(run / train.WEIGHTS_FILE, modules, step=5000)
    norm = "encoder.final_layer_norm.weight"
    raw = train.export_weights(run, "t5-dit", weights="raw")
    ema = train.export_weights(run, "t5-dit")
    assert (raw.name, ema.name) == ("pipeline-raw", "pipeline")
    assert torch.all(load_file(raw / "text_encoder" / "model.safetensors")[norm] == 0.5)
    assert torch.equal(
        load_file(ema / "text_encoder" / "model.safetensors")[norm],
        load_file(shipped / "text_encoder" / "model.safetensors")[norm],
    )
    assert [r["weights"] for r in log_of(run) if r["stage"] == "export"] == ["raw", "ema"]
    with pytest.raises(ValueError, match="weights must be one of ema, raw, got 'best'"):
        train.export_weights(run, "t5-dit", weights="best")
