"""One cap on a run's work, whatever multiplies it (seeds, tokens, panels, pixels), and a Cancel that cancels what
the user asked for, queued runs included."""

import pytest

import difflens_widgets as dl
from difflens_widgets.analyses.panels import plan_panels
from difflens_widgets.core import validate
from difflens_widgets.testing import tiny_stable_diffusion

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def lens():
    return dl.Lens(tiny_stable_diffusion())


def test_per_token_runs_count_their_tokens(lens):
    tokens = lens.adapter.count_tokens(PROMPT)
    assert tokens == 5  # start, a, red, circle, end
    seeds = validate.MAX_IMAGES // (5 * tokens) + 1  # under the cap without tokens, over it with them
    assert lens.resolve(PROMPT, seeds=range(seeds)).images == 5 * seeds
    with pytest.raises(ValueError, match=r"images \(layers × seeds × tokens\)"):
        lens.resolve(PROMPT, seeds=range(seeds), per_token=True)
    assert lens.resolve(PROMPT, seeds=[0], per_token=True).images == 5 * tokens


def test_panels_count_towards_the_cap(lens):
    seeds = range(validate.MAX_IMAGES // 5)  # 5 layers: just under the cap for one panel
    assert plan_panels(lens, PROMPT, seeds=seeds).images == 5 * len(seeds) <= validate.MAX_IMAGES
    with pytest.raises(ValueError, match=r"images \(layers × seeds × panels\)"):
        plan_panels(lens, PROMPT, seeds=seeds, compare="final_norm")


def test_pixels_times_images_are_weighed(lens):
    with pytest.raises(ValueError, match="gigapixels"):
        lens.resolve(PROMPT, layers=[4], seeds=range(4095), height=4096, width=4096)
    assert lens.resolve(PROMPT, layers=[4], seeds=range(16), height=4096, width=4096).images == 16  # 16 at 16 MP


def test_a_queued_run_honours_cancel():
    dash = dl.LensDashboard(tiny_stable_diffusion(), prompt=PROMPT, layers="0:5", seeds="0,1", num_inference_steps=30)
    for _ in range(20):
        dash.run()
        dash.cancel()
    assert dash.wait(120)
    assert dash.status == "cancelled", dash.status
    dash.run()
    dash.prompt = "a blue square"
    dash.run()  # queued behind the first
    dash.cancel()  # cancels both: the queued run never starts
    assert dash.wait(120) and dash.status == "cancelled" and dash.run_info["prompt"] == PROMPT
