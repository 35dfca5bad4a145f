"""Raw vs tuned: loading every kind of tuned variant, compare(), the similarity analyses and the tracker."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from transformers import CLIPTextConfig, CLIPTextModel

import difflens_widgets as dl
from difflens_widgets import similarity
from difflens_widgets.analyses.tracker import LensTracker
from difflens_widgets.testing import tiny_stable_diffusion

RUN = dict(layers=None, seeds=(0, 1), num_inference_steps=3)


@pytest.fixture(scope="module")
def base():
    return tiny_stable_diffusion(seed=0)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A LoRA on the UNet's attention and the text encoder's attention, with non-zero weights, saved the way
    diffusers' training scripts save one."""
    work = tiny_stable_diffusion(seed=0)
    torch.manual_seed(1)
    work.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    work.text_encoder.add_adapter(
        LoraConfig(
            r=4, lora_alpha=4, init_lora_weights=False, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]
        )
    )
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=get_peft_model_state_dict(work.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(work.text_encoder),
    )
    return folder


def test_lora_changes_images_with_identical_noise_and_scale_zero_changes_nothing(base, lora_dir):
    before = dl.Lens(base).run("a red circle", use_cache=False, **RUN)
    tuned = dl.load_tuned(base, lora_dir)
    both = dl.compare(base, tuned, "a red circle", **RUN)
    assert both.layers == [0, 1, 2, 3, 4] and both.seeds == [0, 1] and len(both.pairs()) == 10
    assert all(d > 2.0 for d in both.mean_difference().values())  # the LoRA acts at every layer
    off = dl.compare(base, dl.load_tuned(base, lora_dir, lora_scale=0.0), "a red circle", **RUN)
    assert all(d == 0.0 for d in off.mean_difference().values())  # same noise, same weights → same pixels
    # the base itself was not modified by loading the LoRA
    assert type(base.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q) is torch.nn.Linear
    after = dl.Lens(base).run("a red circle", use_cache=False, **RUN)
    assert all(np.array_equal(np.asarray(before.images[k]), np.asarray(after.images[k])) for k in before.images)


def test_comparison_difference_grid_and_token_shift(base, lora_dir):
    both = dl.compare(base, dl.load_tuned(base, lora_dir), "a red circle", **RUN)
    diff = both.difference(2, seed=1)
    raw, tuned = both.pair(2, seed=1)
    assert diff.shape == (32, 32, 3)
    assert np.allclose(diff, np.abs(np.asarray(raw, np.float32) - np.asarray(tuned, np.float32)))
    assert both.grid().size == (130 + 5 * 128, 26 + 22 + 6 * 128)  # raw, tuned and their difference per seed
    shift = both.token_shift()
    assert shift.values.shape == (5, 5)  # <start> a red circle <end> × layers 0..4
    assert np.allclose(shift.values[:, 0], 1.0, atol=1e-5)  # the LoRA leaves the token embeddings alone
    assert shift.values[:, 1:].min() < 0.99


def test_component_folders_and_pipeline_folders(base, tmp_path):
    other = tiny_stable_diffusion(seed=1)
    other.text_encoder.save_pretrained(tmp_path / "parts" / "text_encoder")
    tuned = dl.load_tuned(base, tmp_path / "parts")
    assert tuned.unet is base.unet and tuned.text_encoder is not base.text_encoder
    assert tuned.scheduler is not base.scheduler  # runs of raw and tuned never share scheduler state
    shift = similarity.token_shift(base, tuned, "a red circle")
    assert shift.values.shape == (5, 5) and shift.values.min() < 0.9
    single = dl.load_tuned(base, tmp_path / "parts" / "text_encoder")  # a bare text-encoder folder
    assert torch.equal(
        single.text_encoder.get_input_embeddings().weight, other.text_encoder.get_input_embeddings().weight
    )
    other.save_pretrained(tmp_path / "full")
    full = dl.load_tuned(base, tmp_path / "full")
    assert type(full).__name__ == "StableDiffusionPipeline" and full is not base


def test_textual_inversion_adds_a_token_to_a_copy(base, tmp_path):
    from safetensors.torch import save_file

    save_file({"emb_params": torch.randn(1, 32)}, tmp_path / "learned_embeds.safetensors")
    tuned = dl.load_tuned(base, tmp_path, token="<xon>")
    assert "<xon>" in tuned.tokenizer.get_vocab() and "<xon>" not in base.tokenizer.get_vocab()
    both = dl.compare(base, tuned, "a <xon> circle", layers=[4], seeds=0, num_inference_steps=2)
    assert both.complete
    with pytest.raises(ValueError, match="tokenize the prompt differently"):
        both.token_shift()


def test_mismatched_architectures_are_refused_before_any_run(base, count_calls, tmp_path):
    unet_calls = count_calls(base.unet)
    with pytest.raises(ValueError, match="text-encoder layers: base 4, tuned 3"):
        dl.load_tuned(base, tiny_stable_diffusion(num_layers=3))
    wide = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(base.tokenizer),
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=16,
        )
    )
    wide.save_pretrained(tmp_path / "text_encoder")
    with pytest.raises(ValueError, match="text-encoder width: base 32, tuned 48"):
        dl.load_tuned(base, tmp_path)
    with pytest.raises(ValueError, match="architecture"):
        dl.compare(base, tiny_stable_diffusion(num_layers=3), "a red circle")
    assert len(unet_calls) == 0


def test_paths_that_hold_no_tuned_model(base, tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(ValueError, match="holds no tuned model.*LoRA weights"):
        dl.load_tuned(base, tmp_path)
    with pytest.raises(FileNotFoundError, match="no tuned model at"):
        dl.load_tuned(base, tmp_path / "missing")


# ---- similarity analyses ---------------------------------------------------------------------------------------
def test_token_similarity_per_layer(base):
    same = similarity.token_similarity(base, "a red circle", "circle", "a blue circle", "circle")
    assert same.layers == [0, 1, 2, 3, 4] and same.values.shape == (5,)
    assert same.values[0] == pytest.approx(1.0, abs=1e-5)  # layer 0: the same token embedding (+ position)...
    assert same.values[1:].max() < 1.0  # ... later layers see "red" vs "blue"
    self_sim = similarity.token_similarity(base, "a photo of xon dog", "xon", "a photo of xon dog", "xon")
    assert np.allclose(self_sim.values, 1.0, atol=1e-5)
    assert self_sim.figure().data[0].type == "scatter"


def test_token_not_in_prompt_names_the_prompts_tokens(base):
    with pytest.raises(
        ValueError,
        match=r"'dog' .* is not in the prompt 'a red circle', whose tokens are: "
        r"<\|startoftext\|> a red circle <\|endoftext\|>",
    ):
        similarity.token_similarity(base, "a red circle", "dog", "a dog", "dog")
    with pytest.raises(ValueError, match="non-empty string"):
        similarity.token_similarity(base, "a red circle", " ", "a dog", "dog")


def test_multi_piece_words_use_their_last_piece():
    tokens = ["<|startoftext|>", "a</w>", "x", "on</w>", "triangle</w>", "<|endoftext|>", "<|endoftext|>"]
    assert similarity.word_position(tokens, ["x", "on</w>"], "xon", "a xon triangle") == 3
    with pytest.raises(ValueError, match="not in the prompt"):  # padding is never searched
        similarity.word_position(tokens, ["<|endoftext|>", "<|endoftext|>"], "pad", "a xon triangle")


def test_layer_similarity_matches_the_lens_run(base):
    table = similarity.layer_similarity(base, "a red circle")
    assert np.allclose(np.diag(table.values), 1.0, atol=1e-5) and np.allclose(table.values, table.values.T)
    run = dl.Lens(base).run("a red circle", seeds=0, num_inference_steps=1)
    from_run, layers = similarity.layer_layer_similarity(run)
    assert layers == table.layers and np.allclose(from_run, table.values, atol=1e-5)
    assert table.figure().data[0].type == "heatmap"


# ---- tracker and its view -------------------------------------------------------------------------------------
def test_tracker_records_every_n_steps_and_restores_training_mode(base):
    tracker = LensTracker(
        "a red circle",
        layers="0:5:2",
        every=2,
        num_inference_steps=2,
        pairs=[("a red circle", "red", "a red circle", "circle")],
    )
    base.unet.train()
    recorded = [tracker(base, step) for step in range(5)]
    assert recorded == [True, False, True, False, True]
    assert base.unet.training and not base.text_encoder.training  # modes put back as they were
    base.unet.eval()
    assert tracker.steps == [0, 2, 4] and tracker.layers == [0, 2, 4]
    table = tracker.similarity_table()
    assert table.shape == (3, 3) and np.allclose(table, table[0])  # weights never changed → same numbers
    assert tracker.grid().size == (40 + 3 * 96, 26 + 22 + 3 * 96)
    with pytest.raises(ValueError, match="four strings"):
        LensTracker("a red circle", pairs=[("a red circle", "red")])
    with pytest.raises(ValueError, match="every must be"):
        LensTracker("a red circle", every=0)


def test_training_view_shows_records_live(base):
    tracker = LensTracker(
        "a red circle",
        layers=[0, 4],
        every=1,
        num_inference_steps=1,
        pairs=[("a red circle", "red", "a blue circle", "blue")],
    )
    tracker(base, 0)
    view = dl.TrainingView(tracker)
    assert view.steps == [0] and view.layers == [0, 4] and len(view.frames) == 2
    assert all(f["png"][:4] == b"\x89PNG" for f in view.frames)
    tracker(base, 10)
    assert view.steps == [0, 10] and len(view.frames) == 4 and view.selected_step == 10
    assert view.similarity["red~blue"]["values"] == tracker.similarity_table().T.round(4).tolist()
    with pytest.raises(TypeError, match="LensTracker"):
        dl.TrainingView("a red circle")


def test_dashboard_accepts_a_lora_path_as_tuned(base, lora_dir):
    dash = dl.LensDashboard(base, tuned=str(lora_dir))
    dash.prompt, dash.seeds, dash.num_inference_steps, dash.layers = "a red circle", "0", 2, "3:5"
    dash.run()
    assert dash.wait(60) and dash.status == "done", dash.message
    raw, tuned = ([f for f in dash.frames if f["kind"] == k] for k in ("raw", "tuned"))
    assert len(raw) == len(tuned) == 2
    assert any(a["png"] != b["png"] for a, b in zip(raw, tuned))


def test_lora_on_a_transformer_family(tmp_path):
    """LoRA loading is not Stable-Diffusion-only: a FLUX transformer LoRA goes through the same path."""
    from diffusers import FluxPipeline

    from difflens_widgets.testing import tiny_flux

    base, work = tiny_flux(), tiny_flux()
    torch.manual_seed(1)
    work.transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v"])
    )
    FluxPipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(work.transformer))
    options = dict(seeds=0, num_inference_steps=2, guidance_scale=3.5, height=32, width=32)
    on = dl.compare(base, dl.load_tuned(base, tmp_path), "a red circle", **options)
    off = dl.compare(base, dl.load_tuned(base, tmp_path, lora_scale=0.0), "a red circle", **options)
    assert all(d > 0 for d in on.mean_difference().values())
    assert all(d == 0 for d in off.mean_difference().values())


def test_similarity_counts_real_tokens_from_the_attention_mask(base, monkeypatch):
    """An end token of an unfamiliar name must not change which positions count: the mask decides."""
    from difflens_widgets import similarity
    from difflens_widgets.core import results

    prompt = "a red circle"
    before = similarity.layer_similarity(base, prompt, layers=[0, 2, 4]).values
    run = dl.Lens(base).run(prompt, layers=[0, 4], num_inference_steps=1)
    heat_before = similarity.token_layer_similarity(run)[0]
    monkeypatch.setattr(results, "END_TOKENS", ())  # as if the tokenizer named its end token differently
    assert np.array_equal(similarity.layer_similarity(base, prompt, layers=[0, 2, 4]).values, before)
    assert np.array_equal(similarity.token_layer_similarity(run)[0], heat_before)
    assert heat_before.shape[0] == run.params["real_tokens"] == 5  # start, a, red, circle, end
