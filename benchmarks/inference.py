"""Describe-an-image speed: plain transformers fp32 `generate` beside MODA's fast paths, same weights, same run.

    python benchmarks/inference.py                       # CPU, ~2-5 minutes on 2 cores
    python benchmarks/inference.py --quick               # smoke run
    python benchmarks/inference.py --device cuda --json benchmarks/results/inference_cuda.json

Real-size architecture (CLIP ViT-B/32 + projector + OPT-125M) with random weights; every description is exactly
`--new-tokens` tokens long (EOS is switched off: random weights would otherwise stop early). Latency at batch 1 includes
image preprocessing; throughput is measured at batch 8 and 32. Each variant runs in its own process, loading the
same saved checkpoint; times are the best of several runs. "same tokens" counts the batch-32 descriptions identical
to the baseline's: with random weights the logits are nearly tied, so this understates agreement on a trained model
(tests/test_fast_inference.py measures it on the sharpened tiny model).

The "drafts" rows check guesses several at a time, as `moda describe` does for a single image. Their speed depends
on how many guesses the model keeps, which random weights cannot show: their model writes one token decisively and
their guesses are right at the rate the trained demo model keeps (benchmarks/simulated_drafter.py;
benchmarks/agreement.py writes the rate to benchmarks/results/agreement_demo.json, `--draft-acceptance` sets
another), averaged over `DRAFTER_DRAWS` random draws of which positions they guess right. The table prints the
tokens each pass wrote.

Next to "cli" and "drafts", the "-direct" rows call `greedy_decoding.greedy_generate` itself, without
`generate_fast`'s check of the settings, and the "-generate" rows run the same optimized model through
`model.generate`, "drafts-generate" with `prompt_lookup_num_tokens=8` (transformers' assisted generation drafting
from the caption table, `caption_drafts.CaptionDraftCandidateGenerator`). Side by side they show what the dispatch
costs and what the hand-written loop gains over generate's machinery.
"""

from __future__ import annotations

import argparse
import json
import statistics

import measure
import numpy as np
import roofline
import torch
from PIL import Image
from simulated_drafter import SimulatedDrafter, counting_passes, make_decisive
from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

from modeling_moda import MODAConfig, MODAForConditionalGeneration
from modeling_moda.fast_inference import apply_cpu_fast_path, cpu_has_native_bf16, vision_precision
from modeling_moda.greedy_decoding import greedy_generate, lean_generation_config

INT8 = {"dtype": "float32", "fast": "int8", "vision": "fp32"}
# what `moda describe` sets up: the vision tower at `--vision auto` (bf16 where native, else fp32)
CLI = {**INT8, "lean": True, "shortlist": True, "reuse_memory": True, "vision": "auto"}
AUTO_VISION = vision_precision("auto")
DRAFT_TOKENS = 8  # guesses a pass checks at most: greedy_generate's default, generate's prompt_lookup_num_tokens
# Which positions a simulated drafter guesses right is drawn at random, and the passes 32 tokens take vary widely
# from one draw to the next at the same rate: the drafts rows average this many draws (latency: the mean of their
# best times)
DRAFTER_DRAWS = 8
VARIANTS = {
    "baseline": {"label": "transformers fp32 generate (baseline)", "dtype": "float32"},
    "int8": {"label": "MODA int8 decoder + LM head, fp32 vision", **INT8},
    "int8-vision": {"label": "MODA int8 + int8 vision tower", **INT8, "vision": "int8"},
    "lean": {"label": "MODA int8 + lean greedy loop, fp32 vision", **INT8, "lean": True},
    "cli": {"label": f"CLI default for batches: int8 + lean loop + caption vocabulary + freed memory reused, "
                     f"{AUTO_VISION} vision (--vision auto on this CPU)", **CLI},
    "cli-direct": {"label": "CLI default, greedy_generate called directly (no generate_fast dispatch)", **CLI,
                   "direct": True},
    "cli-generate": {"label": "CLI default's model through generate (no lean loop)", **CLI, "lean": False},
    "cli-unfused": {"label": "CLI default without the stacked q/k/v projections (three int8 matmuls a layer)", **CLI,
                    "fuse_projections": False},
    "cli-fp32-head": {"label": "CLI default, shortlisted head scored in fp32 (no bf16 screening)", **CLI,
                      "screen_head": False},
    "drafts-fp32-head": {"label": "CLI default + caption drafts, shortlisted head scored in fp32", **CLI,
                         "drafts": True, "screen_head": False},
    "cli-fp32-vision": {"label": "CLI default, fp32 vision (--vision fp32)", **CLI, "vision": "fp32"},
    "cli-int8-vision": {"label": "CLI default, int8 vision (--vision int8)", **CLI, "vision": "int8"},
    "drafts": {"label": f"CLI default for one image: + caption drafts, {AUTO_VISION} vision", **CLI, "drafts": True},
    "drafts-direct": {"label": "CLI default + caption drafts, greedy_generate(drafter=...) called directly", **CLI,
                      "drafts": True, "direct": True},
    "drafts-generate": {"label": f"CLI default's model + caption drafts through generate(prompt_lookup_num_tokens="
                                 f"{DRAFT_TOKENS})", **CLI, "lean": False, "drafts": True},
    "drafts-fp32-vision": {"label": "CLI default + caption drafts, fp32 vision (--vision fp32)", **CLI,
                           "vision": "fp32", "drafts": True},
    "drafts-int8-vision": {"label": "CLI default + caption drafts, int8 vision (--vision int8)", **CLI,
                           "vision": "int8", "drafts": True},
    "bf16": {"label": "MODA bf16 weights", "dtype": "bfloat16", "bf16": True},
}
GPU_VARIANTS = ["baseline", "bf16"]  # int8 dynamic quantization is a CPU kernel
# A trained MODA's caption vocabulary (modeling_moda/caption_vocabulary.py) has a few thousand tokens; random
# weights have none, so the shortlist variant keeps this many random token ids (speed grows with the count).
SHORTLIST_TOKENS = 8192
AGREEMENT_RESULTS = measure.REPO_ROOT / "benchmarks" / "results" / "agreement_demo.json"

# Goals for the CLI default (docs/performance.md): one image within 1.5x the floor on every CPU, <= 0.10 s where
# bf16 is native; batch 32 at >= 2.5x the baseline on every CPU, >= 40 images/s where bf16 is native.
GOAL_FLOOR_RATIO = 1.5
GOAL_LATENCY_NATIVE_BF16_S = 0.10
GOAL_SPEEDUP_BATCH32 = 2.5
GOAL_IMAGES_PER_S_NATIVE_BF16 = 40.0


def photos(count: int, seed: int) -> list[Image.Image]:
    """Distinct 256x256 RGB photos (noise plus a coloured block), so that preprocessing does real work."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        pixels = rng.integers(0, 80, (256, 256, 3), dtype=np.uint8)
        pixels[64:192, 64:192] = rng.integers(80, 256, 3, dtype=np.uint8)
        images.append(Image.fromarray(pixels))
    return images


def measure_variant(spec: dict) -> dict:
    """Loads one variant and times it; runs in its own process."""
    measure.setup_worker(spec["device"], spec["threads"], spec["seed"], spec.get("reuse_memory", False))
    model = MODAForConditionalGeneration.from_pretrained(spec["checkpoint"], dtype=getattr(torch, spec["dtype"]))
    model = model.to(spec["device"]).eval()
    if spec.get("fast"):
        vocabulary = None
        if spec.get("shortlist"):
            vocabulary = torch.randperm(model.config.text_config.vocab_size)[: spec["shortlist_tokens"]].tolist()
        if spec.get("drafts"):
            model = make_decisive(model, vocabulary[0])
        model = apply_cpu_fast_path(
            model, spec["fast"], spec["vision"], vocabulary, fuse_projections=spec.get("fuse_projections", True),
            screen_head=spec.get("screen_head"),
        )
    model.generation_config.eos_token_id = None  # fixed length, without a per-step min-length processor
    image_processor = CLIPImageProcessorPil()
    prompt = [model.config.image_token_id, model.config.text_config.bos_token_id]
    new_tokens = spec["new_tokens"]

    @torch.inference_mode()
    def describe(images: list[Image.Image], drafter=None) -> torch.Tensor:
        pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
        input_ids = torch.tensor([prompt] * len(images), device=spec["device"])
        pixel_values = pixel_values.to(spec["device"], model.dtype)
        model.caption_drafter = drafter  # what optimize_for_cpu reads from a checkpoint's caption_drafts.json
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixel_values}
        if spec.get("direct"):  # the loop itself, as generate_fast calls it for these settings
            generated = greedy_generate(model, **inputs, max_new_tokens=new_tokens, drafter=drafter,
                                        draft_tokens=DRAFT_TOKENS)
        elif spec.get("lean"):  # generate_fast: what users call
            generated = model.generate_fast(**inputs, max_new_tokens=new_tokens, do_sample=False)
        else:  # with a drafter: transformers' assisted generation, drafting from it (batch 1 only)
            drafts = {"prompt_lookup_num_tokens": DRAFT_TOKENS} if drafter is not None else {}
            generated = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, **drafts)
        return generated[:, len(prompt) :]

    probe = {"input_ids": torch.tensor([prompt]), "max_new_tokens": new_tokens, "do_sample": False}
    if spec.get("lean") and lean_generation_config(model, None, probe) is None:
        raise RuntimeError(f"{spec['label']}: generate_fast would hand these settings to generate")
    images = photos(max(spec["batch_sizes"]), spec["seed"])
    describe(images[:1])  # warm-up: first-call allocations, kernel selection
    drafters = [None]
    if spec.get("drafts"):  # one image at a time, as `moda describe` uses drafts
        reference = describe(images[:1])
        drafters = [
            SimulatedDrafter(prompt + reference[0].tolist(), spec["draft_acceptance"], spec["seed"] + draw)
            for draw in range(DRAFTER_DRAWS)
        ]
    passes = 0
    for drafter in drafters:
        with counting_passes(model) as counted:
            written = describe(images[:1], drafter)
        passes += counted[0]
        if drafter is not None and not torch.equal(written, reference):
            raise RuntimeError("the drafts row's model should write the same text with and without guesses")
    result = {"tokens_per_pass": new_tokens * len(drafters) / passes}
    result["latency_s"] = statistics.mean(
        measure.seconds(lambda: describe(images[:1], drafter), spec["device"], spec["repeats"]) for drafter in drafters
    )
    for batch_size in spec["batch_sizes"]:
        describe(images[:batch_size])
        result[f"images_per_s_batch{batch_size}"] = batch_size / measure.seconds(
            lambda: describe(images[:batch_size]), spec["device"], max(1, spec["repeats"] // 2)
        )
    result["tokens"] = describe(images).tolist()
    result["peak_memory_mb"] = measure.peak_memory_mb(spec["device"])
    return result


def vision_tower_seconds(precision: str, repeats: int = 10) -> float:
    """One 224x224 image through a real-size CLIP B/32 tower (+ projection) at `precision` ("fp32" or "bf16")."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    tower = CLIPVisionModelWithProjection._from_config(MODAConfig().vision_config).to(dtype).eval()
    pixels = torch.randn(1, 3, 224, 224, dtype=dtype)
    with torch.inference_mode():
        tower(pixel_values=pixels)  # warm-up
        return measure.seconds(lambda: tower(pixel_values=pixels), "cpu", repeats)


def print_floor(args, tokens_per_pass: float) -> dict:
    """The floor under one image at the CLI default: int8 decoder + shortlisted head bytes read each pass
    (bandwidth-bound), divided by the tokens a pass writes with drafts, plus the vision tower at --vision auto."""
    if args.threads:
        torch.set_num_threads(args.threads)
    text = MODAConfig().text_config
    layer_bytes = 4 * text.hidden_size**2 + 2 * text.hidden_size * text.ffn_dim
    decoder_bytes = text.num_hidden_layers * layer_bytes
    head_precision = "bf16" if cpu_has_native_bf16() else "fp32"  # the shortlisted head as the default screens it
    head_bytes = (2 if head_precision == "bf16" else 4) * args.shortlist_tokens * text.hidden_size
    bandwidth = roofline.int8_streaming_gb_per_s()
    decoding = args.new_tokens * (decoder_bytes + head_bytes) / bandwidth / 1e9
    vision = vision_tower_seconds(AUTO_VISION)
    floor = decoding / tokens_per_pass + vision
    print(
        f"floor: int8 weights stream at {bandwidth:.1f} GB/s here (batch 1, torch's int8 kernel); "
        f"{decoder_bytes / 1e6:.0f} MB of int8 decoder + {head_bytes / 1e6:.0f} MB of {head_precision} head per pass x "
        f"{args.new_tokens} tokens = {decoding:.3f} s of decoding at one token per pass, / {tokens_per_pass:.2f} "
        f"tokens per pass with drafts, + {vision:.3f} s of {AUTO_VISION} vision tower = {floor:.3f} s for one image "
        "(preprocessing and the projector not counted)"
    )
    return {"int8_streaming_gb_per_s": round(bandwidth, 2), "vision_tower_s": vision, "one_image_floor_s": floor}


def print_goals(results: dict, floor_s: float | None) -> None:
    """The CLI default's rows against the goals (docs/performance.md)."""
    native = cpu_has_native_bf16()
    if "drafts" in results and floor_s:
        latency = results["drafts"]["latency_s"]
        verdict = "met" if latency <= GOAL_FLOOR_RATIO * floor_s else "missed"
        print(f"goal: one image <= {GOAL_FLOOR_RATIO}x the floor: {latency:.3f} s = {latency / floor_s:.2f}x ({verdict})")
        if native:
            verdict = "met" if latency <= GOAL_LATENCY_NATIVE_BF16_S else "missed"
            print(f"goal: one image <= {GOAL_LATENCY_NATIVE_BF16_S} s with native bf16: {latency:.3f} s ({verdict})")
    key = "images_per_s_batch32"
    if "cli" in results and key in results["cli"]:
        rate, speedup = results["cli"][key], results["cli"][key] / results["baseline"][key]
        verdict = "met" if speedup >= GOAL_SPEEDUP_BATCH32 else "missed"
        print(f"goal: batch 32 >= {GOAL_SPEEDUP_BATCH32}x the baseline: {speedup:.2f}x ({verdict})")
        if native:
            verdict = "met" if rate >= GOAL_IMAGES_PER_S_NATIVE_BF16 else "missed"
            print(f"goal: batch 32 >= {GOAL_IMAGES_PER_S_NATIVE_BF16:g} images/s with native bf16: {rate:.2f} ({verdict})")


def demo_guess_acceptance() -> float:
    """The share of caption-draft guesses the trained demo model keeps, as benchmarks/agreement.py measured it."""
    try:
        return json.loads(AGREEMENT_RESULTS.read_text())["modes"]["cli"]["guess_acceptance"]
    except (OSError, KeyError, json.JSONDecodeError) as error:
        raise SystemExit(
            f"no demo guess acceptance in {AGREEMENT_RESULTS} ({error!r}): run benchmarks/agreement.py with "
            "--modes cli (see its docstring) or pass --draft-acceptance"
        ) from error


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--shortlist-tokens", type=int, default=SHORTLIST_TOKENS, help="caption vocabulary size")
    parser.add_argument(
        "--draft-acceptance", type=float, help="share of guesses kept in the drafts rows (default: the demo model's)"
    )
    args = measure.parse_arguments(parser, VARIANTS, argv)
    names = args.variants or (GPU_VARIANTS if args.device == "cuda" else measure.default_variants(VARIANTS, "cpu"))
    if args.draft_acceptance is None and any(VARIANTS[name].get("drafts") for name in names):
        args.draft_acceptance = demo_guess_acceptance()
    if args.draft_acceptance is not None and not 0 <= args.draft_acceptance <= 1:
        raise SystemExit(f"--draft-acceptance must be between 0 and 1, got {args.draft_acceptance}")
    batch_sizes = [8] if args.quick else [8, 32]

    results = measure.run_variants(
        measure_variant,
        VARIANTS,
        names,
        args,
        new_tokens=args.new_tokens,
        shortlist_tokens=args.shortlist_tokens,
        draft_acceptance=args.draft_acceptance,
        batch_sizes=batch_sizes,
        repeats=2 if args.quick else 5,
    )

    base = results["baseline"]
    headers = ["variant", "1 image (s)", "speed-up", "tokens per pass"]
    for batch_size in batch_sizes:
        headers += [f"images/s @{batch_size}", "speed-up"]
    headers += ["peak memory (MB)", f"same {args.new_tokens} tokens as baseline"]
    rows = []
    for name, result in results.items():
        speedup = measure.ratio(result["latency_s"], base["latency_s"], higher_is_better=False)
        row = [VARIANTS[name]["label"], f"{result['latency_s']:.3f}", speedup, f"{result['tokens_per_pass']:.2f}"]
        for batch_size in batch_sizes:
            key = f"images_per_s_batch{batch_size}"
            row += [f"{result[key]:.2f}", measure.ratio(result[key], base[key])]
        same = sum(a == b for a, b in zip(result["tokens"], base["tokens"]))
        result["same_as_baseline"] = f"{same}/{len(base['tokens'])}"
        rows += [row + [f"{result['peak_memory_mb']:.0f}", result["same_as_baseline"]]]
    info = measure.machine(args.device, args.threads)
    measure.print_table(
        f"Inference, {args.device}, {info['torch_threads']} threads, {args.new_tokens} new tokens, greedy "
        f"({info['cpu']}, load {info['load_average_1min']})",
        headers,
        rows,
    )
    floor = None
    if args.device == "cpu":
        tokens_per_pass = results.get("drafts", {}).get("tokens_per_pass", 1.0)
        info.update(print_floor(args, tokens_per_pass))
        floor = info["one_image_floor_s"]
    print_goals(results, floor)
    summary = {"machine": info, "new_tokens": args.new_tokens, "results": results}
    for result in results.values():
        result.pop("tokens")
    measure.write_json(args.json, args.command, summary)
    return summary


if __name__ == "__main__":
    main()
