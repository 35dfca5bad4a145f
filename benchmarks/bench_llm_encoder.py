"""A real-size language-model text encoder (Qwen3, as FLUX.2 [klein] and Z-Image read prompts) with random weights:
the time and peak memory of the lens's one pass that keeps every layer, against a pass that keeps one layer, and
against the pass the diffusers pipelines make (every hidden state and next-token logits at every position).

    python benchmarks/bench_llm_encoder.py                                  # Qwen3-0.6B and 1.7B, fp32 and bf16
    python benchmarks/bench_llm_encoder.py --configs qwen3-4b --dtypes bfloat16

Each (model, dtype, pass) runs in a fresh subprocess; once the model is built its peak resident memory is reset
(Linux: ``/proc/self/clear_refs``), so "pass peak" is what the passes add above the resident weights. Texts: the
prompt, the negative and the empty prompt (what one lens call encodes), each through the tiny chat template and
padded to 512 tokens as the pipelines pad. Timing and memory do not depend on weight values, and nothing is
downloaded. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

CONFIGS = {  # the published Qwen3 architectures (config.json of Qwen/Qwen3-*)
    "qwen3-0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, intermediate_size=3072),
    "qwen3-1.7b": dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, intermediate_size=6144),
    "qwen3-4b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, intermediate_size=9728),
}
PASSES = ("lens: every layer", "one layer", "pipeline-style")
TEXTS = ["a red cube on top of a blue sphere", "", ""]  # prompt, negative, empty prompt


def build(name: str, dtype: torch.dtype):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=151936, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, **CONFIGS[name]
    )
    torch.manual_seed(0)
    return Qwen3ForCausalLM._from_config(config, torch_dtype=dtype).eval()


def resident(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process, in bytes."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def measure(name: str, dtype_name: str, kind: str, repeats: int) -> dict:
    """One pass kind, in this (fresh) process: seconds per pass (median) and the peak memory the passes add."""
    from difflens_widgets.adapters import encoders as enc
    from difflens_widgets.testing import tiny_chat_tokenizer

    dtype = getattr(torch, dtype_name)
    model, tokenizer = build(name, dtype), tiny_chat_tokenizer(max_length=512)
    pipe = SimpleNamespace(text_encoder=model, tokenizer=tokenizer, device=torch.device("cpu"))
    spec = enc.TextEncoderSpec("text_encoder", "tokenizer", "llm", max_length=512, mask_to_encoder=True)
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in TEXTS
    ]
    _, batch, _ = enc.tokenize(pipe, spec, texts)

    def lens_pass():
        enc.run_encoder(pipe, spec, texts)

    def one_layer():  # the least any reader of one layer must compute: no hidden states kept, logits at one position
        with torch.no_grad():
            model(batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, logits_to_keep=1)

    def pipeline_style():  # diffusers' Flux2Klein/ZImage: every hidden state and logits at every position
        with torch.no_grad():
            model(batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True, use_cache=False)

    run = {"lens: every layer": lens_pass, "one layer": one_layer, "pipeline-style": pipeline_style}[kind]
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the peak so far was building the model: start counting from here
    before, seconds = resident("VmRSS"), []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return {
        "seconds": statistics.median(seconds),
        "pass_peak_gib": (resident("VmHWM") - before) / 2**30,
        "weights_gib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30,
        "parameters_b": sum(p.numel() for p in model.parameters()) / 1e9,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="qwen3-0.6b,qwen3-1.7b")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(measure(*args._child, repeats=args.repeats)))
        return
    header = ("model", "dtype", "params", "weights GiB", "pass", "s/pass", "pass peak GiB")
    print("{:<11} {:<9} {:>7} {:>11} {:<18} {:>7} {:>13}".format(*header))
    for name in args.configs.split(","):
        for dtype in args.dtypes.split(","):
            for kind in PASSES:
                out = subprocess.run(
                    [sys.executable, __file__, "--repeats", str(args.repeats), "--_child", name, dtype, kind],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    f"{name:<11} {dtype:<9} {row['parameters_b']:>6.2f}B {row['weights_gib']:>11.2f} {kind:<18} "
                    f"{row['seconds']:>7.2f} {row['pass_peak_gib']:>13.3f}",
                    flush=True,
                )
    print(f"(3 texts × 512 tokens; {row['threads']} torch threads; median of {args.repeats})")


if __name__ == "__main__":
    main()
