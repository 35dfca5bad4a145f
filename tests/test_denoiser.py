"""Denoiser taps and probes (Revelio): every family's blocks, scoped hooks, probes that find a planted signal and
nothing in shuffled labels, k-SAEs with exactly k active latents, and what the toy model's denoiser knows."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

import difflens_widgets as dl
from difflens_widgets import testing
from difflens_widgets.adapters import adapter_for
from difflens_widgets.denoiser import probes
from difflens_widgets.denoiser import taps as denoiser
from difflens_widgets.toy.world import world_probe_set

FAMILIES = [build.__name__ for build in testing.TINY_FAMILIES.values()]
IMAGES = [Image.new("RGB", (64, 64), c) for c in ("red", "blue", "green")]


def channels_of(module: torch.nn.Module) -> int:
    """The channel count of a block's output, from its last parameterised layer's output width."""
    out = [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    return out[-1].out_channels if isinstance(out[-1], torch.nn.Conv2d) else out[-1].out_features


@pytest.mark.parametrize("family", FAMILIES)
def test_taps_on_every_family_leave_the_pipeline_as_it_was(family):
    pipe = getattr(testing, family)()
    adapter = adapter_for(pipe)
    names = denoiser.block_names(pipe)
    kwargs = dict(
        num_inference_steps=2,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **dict(zip(("height", "width"), adapter.default_size())),
        **denoiser._call_kwargs(pipe, adapter),
    )
    before = pipe(prompt="a red circle", **kwargs).images
    given = denoiser.image_features(pipe, IMAGES, timesteps=[100, 900], keep_spatial=True)
    generated = denoiser.generation_features(
        pipe, ["a red circle", "a blue square"], num_inference_steps=3, at_steps=[0, 2]
    )
    assert given.blocks == names and set(given.pooled) == {(b, t) for b in names for t in (100, 900)}
    for (block, t), pooled in given.pooled.items():
        spatial = given.spatial[(block, t)]
        assert pooled.shape[0] == 3 and spatial.shape[:2] == pooled.shape and spatial.ndim == 4
        assert np.allclose(spatial.mean(axis=(2, 3)), pooled, atol=1e-5) and np.isfinite(pooled).all()
    assert len(generated.timesteps) == 2 and len(generated.images) == 2
    assert all(v.shape[0] == 2 for v in generated.pooled.values())  # the conditional branch only, one row each
    assert not np.allclose(given.pooled[(names[0], 100)], given.pooled[(names[0], 900)])  # t matters
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in adapter.denoiser.modules())
    kwargs["generator"] = torch.Generator().manual_seed(0)
    assert np.array_equal(pipe(prompt="a red circle", **kwargs).images, before)


def test_unet_block_widths_match_the_model():
    pipe = testing.tiny_stable_diffusion()
    blocks = adapter_for(pipe).denoiser_blocks()
    assert list(blocks) == ["down0", "down1", "mid", "up0", "up1"]
    given = denoiser.image_features(pipe, IMAGES, timesteps=[500])
    for name, module in blocks.items():
        assert given.pooled[(name, 500)].shape[1] == channels_of(module), name


def test_bad_taps_are_refused_with_what_is_allowed():
    pipe = testing.tiny_stable_diffusion()
    with pytest.raises(ValueError, match="unknown denoiser block.*up9.*has down0, down1, mid, up0, up1"):
        denoiser.image_features(pipe, IMAGES, blocks=["up9"])
    with pytest.raises(ValueError, match="training timesteps in 0..999"):
        denoiser.image_features(pipe, IMAGES, timesteps=[1000])
    with pytest.raises(ValueError, match="no images"):
        denoiser.image_features(pipe, [])
    with pytest.raises(ValueError, match="at_steps must be step indices in 0..2"):
        denoiser.generation_features(pipe, ["a"], num_inference_steps=3, at_steps=[3])
    with pytest.raises(ValueError, match="has 2 labels for 3 images"):
        probes.probe(pipe, IMAGES, {"color": ["red", "blue"]})


def planted(n=240, width=48, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = [f"c{i % classes}" for i in range(n)]
    x = rng.standard_normal((n, width))
    directions = rng.standard_normal((classes, width)) * 3
    x += directions[[int(l[1:]) for l in labels]]
    return x, labels


def test_probe_finds_a_planted_signal_and_nothing_in_shuffled_labels():
    x, labels = planted()
    accuracy, chance = probes.linear_probe(x, labels)
    assert accuracy >= 0.95 and chance == pytest.approx(0.25, abs=0.05)
    shuffled = list(np.random.default_rng(1).permutation(labels))
    accuracy, chance = probes.linear_probe(x, shuffled)
    assert accuracy <= chance + 0.15
    with pytest.raises(ValueError, match="at least two classes"):
        probes.linear_probe(x, ["a"] * len(x))


def test_k_sae_has_exactly_k_active_latents_and_finds_pure_ones():
    rng = np.random.default_rng(0)
    labels = [f"c{i % 4}" for i in range(240)]
    x = rng.standard_normal((240, 32))
    x[np.arange(240), [int(l[1:]) for l in labels]] += 4.0  # each class: one sparse feature, random directions mix
    sae = probes.train_sae(x, {"class": labels}, k=8, expansion=4, steps=400)
    assert set((sae.activations != 0).sum(axis=1)) == {8}
    assert sae.activations.shape == (240, 128) and 0 <= sae.dead_share < 1 and sae.reconstruction_error < 0.5
    assert sae.mean_purity("class") > sae.random_purity["class"]
    assert sae.monosemantic("class", 1.0)  # some latents fire only for one planted class
    top = sae.top_images(sae.monosemantic("class", 1.0)[0][0])
    assert len(set(labels[i] for i in top)) == 1
    with pytest.raises(ValueError, match="k must be in 1..4"):
        probes.TopKSAE(8, 4, 5)


def test_pca_rgb_maps_a_spatial_feature():
    feature = np.zeros((16, 8, 8), np.float32)
    feature[0, :, :4] = 1.0  # left half differs from the right half
    image = probes.pca_rgb(feature, size=64)
    pixels = np.asarray(image)
    assert image.size == (64, 64) and not np.array_equal(pixels[:, 0], pixels[:, -1])


def test_toy_denoiser_knows_colour_and_shape_and_results_round_trip(tmp_path):
    images, labels = world_probe_set(120, seed=0)
    result = dl.probe(
        dl.load_pipeline("toy"),
        images,
        {"color": labels["color"], "shape": labels["shape"]},
        blocks=["mid", "up1"],
        timesteps=[50, 950],
    )
    up1, low, high = result.blocks.index("up1"), 0, 1
    assert result.accuracy["color"][up1, low] >= 0.8 > result.chance["color"] * 3
    assert result.accuracy["color"][up1, low] > result.accuracy["color"][up1, high]  # noise hides colour
    assert result.accuracy["shape"][up1, low] >= 0.6
    fig = result.figure("shape")
    assert np.allclose(np.asarray(fig.data[0].z), result.accuracy["shape"])
    again = dl.ProbeResult.load(result.save(tmp_path / "probe"))
    assert again.blocks == result.blocks and np.allclose(again.accuracy["color"], result.accuracy["color"])
    assert np.array_equal(again.features.matrix("up1", 50), result.features.matrix("up1", 50))
    sae = again.sae("up1", 50, k=16, steps=300)
    assert set((sae.activations != 0).sum(axis=1)) == {16}
    assert sae.mean_purity("color") > sae.random_purity["color"] - 0.05


def test_probe_command_line(tmp_path, capsys):
    from difflens_widgets.cli import main

    assert (
        main(
            [
                "probe",
                "--images",
                "36",
                "--blocks",
                "up1",
                "--timesteps",
                "50",
                "--sae",
                "up1@50",
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "color: linear-probe accuracy" in out and "| up1 |" in out and "k-SAE on up1@50" in out
    assert (tmp_path / "p" / "probe.json").exists() and (tmp_path / "p" / "probe.html").exists()
    assert main(["probe", "--images", "nope.csv", "--out", str(tmp_path / "q")]) == 2
    assert "neither a number nor a CSV" in capsys.readouterr().err


@pytest.fixture(scope="module")
def toy_probe():
    pipe = dl.load_pipeline("toy")
    return dl.probe(pipe, 72, blocks=["mid", "up1"], timesteps=[50, 500]), pipe


@pytest.mark.slow
def test_denoiser_view_opens_a_state_on_click(toy_probe):
    result, pipe = toy_probe
    view = dl.DenoiserView(result, pipe)
    assert view.wait(120)  # the k-SAE trains in the background, its progress on screen
    best = np.unravel_index(result.accuracy["color"].argmax(), result.accuracy["color"].shape)
    assert view.cell == f"{result.blocks[best[0]]}@{result.timesteps[best[1]]}" and view.status == "done"
    assert view.tables["color"]["z"] == result.accuracy["color"].round(3).tolist()
    assert view.tables["color"]["zmin"] == result.chance["color"]
    view.cell = "mid@500"  # what a click on that heatmap cell sends
    assert view.wait(120)
    gallery = view.galleries["mid@500:color"]
    sae = result.sae("mid", 500)
    assert gallery["k"] == 32 and gallery["purity"] == round(sae.mean_purity("color"), 3)
    first = gallery["latents"][0]
    assert first["purity"] == max(p for p in sae.purity["color"] if p == p)
    assert first["label"] == sae.label_of(first["latent"], "color") and first["images"][0][:4] == b"\x89PNG"
    assert set(view.pca) == {"mid", "up1"} and all(png[:4] == b"\x89PNG" for png in view.pca.values())
    view.label = "shape"
    assert view.wait(120) and "mid@500:shape" in view.galleries
    view.cell = "up9@50"
    assert view.wait(120) and view.status == "error" and "must be BLOCK@T" in view.message


def test_lens_and_denoiser_tabs(toy_probe):
    result, pipe = toy_probe
    tabs = dl.lens_and_denoiser(pipe, result, prompt="a red circle")
    assert tabs.titles == ("Lens", "Denoiser")
    lens_tab, denoiser_tab = tabs.children
    assert isinstance(lens_tab, dl.LensDashboard) and lens_tab.prompt == "a red circle"
    assert isinstance(denoiser_tab, dl.DenoiserView) and denoiser_tab.result is result


@pytest.mark.slow
def test_denoiser_view_in_chromium(toy_probe, tmp_path):
    """The heatmap, a click on a cell, that state's gallery: in the browser, from the shipped bundle."""
    from playwright.sync_api import sync_playwright

    from difflens_widgets.widgets.standalone import widget_state, write_page

    result, pipe = toy_probe
    view = dl.DenoiserView(result, pipe)
    opened = view.cell
    view.cell = "mid@500"  # computed now, so the frozen page has it to show after the click
    assert view.wait(120)
    view.cell = opened
    assert view.wait(120)
    page_file = write_page(widget_state(view), tmp_path / "denoiser.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(page_file.as_uri())
        page.wait_for_function("window.rendered === true")
        assert page.locator(".dl-probe-heatmap .dl-hm-cell").count() == 4
        assert page.locator(".dl-sae-latent").count() == 8
        page.locator('.dl-hm-cell[data-y="mid"][data-x="500"]').click()
        assert page.evaluate("window.model.get('cell')") == "mid@500"
        assert "mid@500" in page.locator(".dl-sae-summary").inner_text()
        first = page.locator(".dl-sae-latent").first
        assert first.get_attribute("data-latent") == str(view.galleries["mid@500:color"]["latents"][0]["latent"])
        page.wait_for_function("document.querySelector('.dl-sae-images img').naturalWidth === 48")
        assert page.locator(".dl-hm-cell.dl-hm-marked").count() == 1
        page.screenshot(path=str(tmp_path / "denoiser.png"), full_page=True)
        browser.close()
    assert errors == []


def test_conv_head_reads_where_a_feature_sits_which_pooling_loses():
    rng = np.random.default_rng(0)
    sides = ["left" if i % 2 else "right" for i in range(160)]
    spatial = rng.standard_normal((160, 4, 6, 6)).astype(np.float32) * 0.3
    for i, side in enumerate(sides):
        columns = slice(0, 3) if side == "left" else slice(3, 6)
        spatial[i, 0, :, columns] += 2.0  # the same mass, on one side or the other
    linear, chance = probes.linear_probe(spatial.mean(axis=(2, 3)), sides)
    conv, _ = probes.conv_probe(spatial, sides)
    assert conv >= 0.95 and linear <= chance + 0.2
    with pytest.raises(ValueError, match="head must be 'linear' or 'conv'"):
        probes.probe(testing.tiny_stable_diffusion(), IMAGES, {"c": ["a", "b", "a"]}, head="mlp")


def test_taps_probes_and_sae_report_progress_and_stop_on_cancel(tiny_pipe):
    from difflens_widgets.core.lifecycle import Cancelled

    heard = []
    result = probes.probe(tiny_pipe, IMAGES, {"color": ["red", "blue", "red"]}, blocks=["mid"], timesteps=[100, 900],
                          progress=lambda done, total, what: heard.append((what, done, total)))  # fmt: skip
    assert heard[0] == ("taps", 0, 2) and ("taps", 2, 2) in heard and heard[-1] == ("probes", 2, 2)
    with pytest.raises(Cancelled, match="taps: cancelled at 1 of 2"):
        probes.probe(tiny_pipe, IMAGES, {"color": ["red", "blue", "red"]}, blocks=["mid"], timesteps=[100, 900],
                     progress=lambda done, total, what: done == 1)  # fmt: skip
    steps = []
    result.sae("mid", 100, steps=300, progress=lambda done, total, what: steps.append(done))
    assert steps == [0, 100, 200]
    with pytest.raises(Cancelled, match="k-SAE"):
        result.sae("mid", 900, steps=300, progress=lambda done, total, what: done >= 100)


@pytest.mark.slow
def test_a_probing_view_shows_at_once_and_fills_in(tiny_pipe, monkeypatch):
    started, release = threading.Event(), threading.Event()
    real_probe = probes.probe

    def held_probe(*args, **kwargs):  # hold the background job until the view's first state has been read
        started.set()
        release.wait(60)
        return real_probe(*args, **kwargs)

    monkeypatch.setattr(probes, "probe", held_probe)
    view = dl.DenoiserView.probing(tiny_pipe, IMAGES, {"color": ["red", "blue", "red"]}, blocks=["mid"],
                                   timesteps=[100, 900])  # fmt: skip
    assert started.wait(30)
    assert view.status == "running" and view.message == "probing the denoiser on 3 images…"
    release.set()
    assert view.wait(120) and view.status == "done" and list(view.tables) == ["color"]
    assert view.galleries  # the best state's k-SAE, trained in the same background job
