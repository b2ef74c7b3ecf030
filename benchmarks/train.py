"""Training speed: the plain loop (fp32, CLIP recomputed every step, AdamW) beside MODA's fast settings.

    python benchmarks/train.py                       # CPU, ~2-5 minutes on 2 cores
    python benchmarks/train.py --quick               # smoke run
    python benchmarks/train.py --device cuda --json benchmarks/results/train_cuda.json

Real-size architecture with random weights, the original recipe's trainable set (vision tower frozen; projector
and OPT-125M trained), except the LoRA row (`train_hf.py --lora`: adapters on the LM's attention, projector in
full). One step = forward and backward on `--accumulation-steps` batches of `--batch-size` captions of `--seq-len`
tokens, then the optimizer step (the original recipe: batch 32, 8 accumulation steps).
MODA's settings: the frozen-feature cache (`image_embeds` computed once per dataset, so CLIP leaves the step),
fused AdamW (`torch.optim.AdamW(fused=True)`, Trainer's `optim="adamw_torch_fused"`), freed memory kept for reuse
(`moda/cpu_memory.py`, CPU only), the LM head run only at positions with a label (`forward(skip_logits=)`,
the default while training), bf16 autocast and `torch.compile` (its compile time falls in the untimed warm-up
step). Each variant runs in its own process from the same saved weights; "loss check" is the untrained model's
loss on the batch with dropout off, through the variant's own forward: a check that every variant computes the
same thing.
"""

from __future__ import annotations

import argparse

import measure
import roofline
import torch
from peft import get_peft_model

from moda.lora import lora_config
from modeling_moda import MODAConfig, MODAForConditionalGeneration
from modeling_moda.fast_inference import cpu_has_native_bf16

VARIANTS = {
    "baseline": {"label": "transformers fp32, pixel_values, AdamW (baseline)", "images": "pixel_values"},
    "pixels-fp32": {"label": "MODA fp32, pixel_values, fused AdamW", "images": "pixel_values", "fused": True},
    "cache-fp32": {"label": "MODA fp32, feature cache, fused AdamW", "images": "image_embeds", "fused": True},
    "cache-reuse": {
        "label": "MODA fp32, feature cache, fused AdamW, freed memory reused", "images": "image_embeds", "fused": True,
        "reuse_memory": True,
    },
    "cache-labelled": {
        "label": "MODA fp32, feature cache, fused AdamW, freed memory reused, LM head at labelled positions only "
        "(**`train_hf.py` default**; it adds bf16 autocast where bf16 is native)",
        "images": "image_embeds", "fused": True, "reuse_memory": True, "labelled_head": True,
    },
    "cache-compile": {
        "label": "MODA default + torch.compile", "images": "image_embeds", "fused": True, "reuse_memory": True,
        "labelled_head": True, "compile": True,
    },
    "lora": {
        "label": "MODA LoRA (`train_hf.py --lora`), feature cache, fused AdamW, freed memory reused, labelled head",
        "images": "image_embeds", "fused": True, "reuse_memory": True, "labelled_head": True, "lora": True,
    },
    "pixels-bf16": {
        "label": "MODA bf16 autocast, pixel_values, fused AdamW", "images": "pixel_values", "fused": True, "bf16": True
    },
    "cache-bf16": {
        "label": "MODA default + bf16 autocast (**`train_hf.py` default where bf16 is native**)",
        "images": "image_embeds", "fused": True, "reuse_memory": True, "labelled_head": True, "bf16": True,
    },
    "lora-bf16": {
        "label": "MODA LoRA + bf16 autocast (`train_hf.py --lora` where bf16 is native)", "images": "image_embeds",
        "fused": True, "reuse_memory": True, "labelled_head": True, "lora": True, "bf16": True,
    },
}
# the rows train_hf.py runs by default, by whether this CPU has native bf16
DEFAULT_ROW = {False: ("cache-labelled", "lora"), True: ("cache-bf16", "lora-bf16")}
GOAL_CEILING_SHARE = 0.85

# The original: 20 epochs in 104 minutes on an A100 at about 7.4 samples/s, i.e. about 46,000 samples seen.
ORIGINAL_SAMPLES_PER_S = 7.4
ORIGINAL_RECIPE_SAMPLES = round(104 * 60 * ORIGINAL_SAMPLES_PER_S)
GOAL_GPU_RECIPE_S = 60.0


def training_batch(config, batch_size: int, seq_len: int, device: str) -> dict[str, torch.Tensor]:
    """`<image>`, BOS, caption tokens, EOS; labels mask the image and BOS positions like the processor does."""
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(4, 50000, (batch_size, seq_len - 3), generator=generator)
    columns = [torch.full((batch_size, 1), token) for token in (config.image_token_id, config.text_config.bos_token_id)]
    input_ids = torch.cat([*columns, text, torch.full((batch_size, 1), config.text_config.eos_token_id)], dim=1)
    labels = input_ids.clone()
    labels[:, :2] = -100
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids, device=device),
        "labels": labels.to(device),
        "pixel_values": torch.randn(batch_size, 3, 224, 224, generator=generator).to(device),
    }


def measure_variant(spec: dict) -> dict:
    """Loads the checkpoint and times training steps; runs in its own process."""
    measure.setup_worker(spec["device"], spec["threads"], spec["seed"], spec.get("reuse_memory", False))
    device = spec["device"]
    model = MODAForConditionalGeneration.from_pretrained(spec["checkpoint"]).to(device)
    if spec.get("lora"):
        model = get_peft_model(model, lora_config())  # train_hf.py's defaults: attention LoRA, projector in full
    batch = training_batch(model.config, spec["batch_size"], spec["seq_len"], device)
    if spec["images"] == "image_embeds":  # the feature cache: computed once per image, outside the step
        with torch.no_grad():
            batch["image_embeds"] = model.get_image_embeds(batch.pop("pixel_values"))
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, fused=spec.get("fused"))
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=spec.get("bf16", False))
    forward = torch.compile(model) if spec.get("compile") else model  # compiles during the warm-up step

    def loss() -> torch.Tensor:
        with autocast:  # without the labelled head, the LM head runs at every position, as in plain transformers
            return forward(**batch, skip_logits=spec.get("labelled_head", False)).loss

    with torch.no_grad():  # the model is in eval mode after loading: no dropout, so every variant's loss agrees
        check_loss = loss().item()
    model.train()

    def step() -> None:
        for _ in range(spec["accumulation_steps"]):
            (loss() / spec["accumulation_steps"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    step_s = measure.seconds(step, device, spec["steps"])
    result = {
        "samples_per_s": spec["batch_size"] * spec["accumulation_steps"] / step_s,
        "step_s": step_s,
        "check_loss": check_loss,
        "peak_memory_mb": measure.peak_memory_mb(device),
        "trainable_parameters": sum(parameter.numel() for parameter in parameters),
    }
    if spec.get("profile"):  # one more step, untimed, under torch.profiler: where a step's time goes
        with torch.profiler.profile(record_shapes=True) as profiler:
            step()
        result["profile"] = profiler.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40, max_shapes_column_width=50
        )
    return result


def print_compute_ceiling(args, gflops: float, precision: str) -> float:
    """The matmul ceiling on samples/s: 6 FLOPs per trained weight per token it sees, at this CPU's measured peak
    for `precision`; returns it."""
    model = MODAForConditionalGeneration(MODAConfig())
    # the decoder's weights meet every token but the last, which predicts nothing; the tied 50272 x 768 embedding
    # only as the LM head's matmul at the labelled positions (all but the image input, whose next token is BOS, and
    # the last); the position table is a lookup; the projector sees only the image tokens
    head = model.get_output_embeddings().weight.numel()
    decoder = sum(p.numel() for name, p in model.language_model.named_parameters() if "embed_" not in name)
    projector = sum(p.numel() for p in model.projector.parameters()) * model.config.num_image_tokens
    decoded, labelled = args.seq_len - 1, args.seq_len - 2
    sample_gflop = 6 * (decoder * decoded + head * labelled + projector) / 1e9
    ceiling = gflops / sample_gflop
    print(
        f"ceiling: {precision} matmul peaks at {gflops:.0f} GFLOP/s here; a {args.seq_len}-token sample needs "
        f"{sample_gflop:.1f} GFLOP (6 x {decoder / 1e6:.0f}M decoder weights x {decoded} tokens + 6 x "
        f"{head / 1e6:.0f}M LM head weights x {labelled} labelled tokens, the projector once per image), so a "
        f"{precision} full fine-tune reaches at most {ceiling:.2f} samples/s if every FLOP ran at that peak"
    )
    return ceiling


def print_default_goals(results: dict, ceilings: dict[str, float], native_bf16: bool) -> None:
    """train_hf.py's default row against its precision's ceiling, and LoRA against it in the same precision."""
    full, lora = DEFAULT_ROW[native_bf16]
    precision = "bf16" if native_bf16 else "fp32"
    if full in results and precision in ceilings:
        share = results[full]["samples_per_s"] / ceilings[precision]
        verdict = "met" if share >= GOAL_CEILING_SHARE else "missed"
        print(f"goal: the default ({full}) at >= {GOAL_CEILING_SHARE:.0%} of the {precision} ceiling: {share:.0%} ({verdict})")
    if full in results and lora in results:
        faster = results[lora]["samples_per_s"] > results[full]["samples_per_s"]
        print(f"goal: LoRA ({lora}) faster than the full fine-tune ({full}): {'met' if faster else 'missed'}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=29, help="tokens per sample, image and BOS included")
    parser.add_argument("--accumulation-steps", type=int, default=1, help="batches per optimizer step")
    parser.add_argument("--steps", type=int, help="timed steps per variant (default 3, --quick 1)")
    parser.add_argument("--profile", action="store_true", help="also print each variant's top operators, one step")
    args = measure.parse_arguments(parser, VARIANTS, argv)
    if args.seq_len < 4:
        raise SystemExit("--seq-len must be at least 4 (image, BOS, one token, EOS)")
    if args.accumulation_steps < 1:
        raise SystemExit("--accumulation-steps must be at least 1")
    steps = args.steps or (1 if args.quick else 3)

    if args.device == "cpu":  # the peak, before and after the variants: a slow spell of a shared machine lowers it
        if args.threads:
            torch.set_num_threads(args.threads)
        peak_gflops = {"fp32": roofline.matmul_gflops()}
        if cpu_has_native_bf16():
            peak_gflops["bf16"] = roofline.matmul_gflops(torch.bfloat16)
    results = measure.run_variants(
        measure_variant,
        VARIANTS,
        args.variants or measure.default_variants(VARIANTS, args.device),
        args,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        accumulation_steps=args.accumulation_steps,
        steps=steps,
        profile=args.profile,
    )

    base = results["baseline"]
    rows = [
        [
            VARIANTS[name]["label"],
            f"{result['samples_per_s']:.2f}",
            measure.ratio(result["samples_per_s"], base["samples_per_s"]),
            f"{result['step_s']:.2f}",
            f"{result['peak_memory_mb']:.0f}",
            f"{result['check_loss']:.4f}",
        ]
        for name, result in results.items()
    ]
    info = measure.machine(args.device, args.threads)
    measure.print_table(
        f"Training, {args.device}, {info['torch_threads']} threads, batch {args.batch_size} x {args.seq_len} tokens"
        f"{f' x {args.accumulation_steps} accumulated' if args.accumulation_steps > 1 else ''}, "
        f"{steps} timed steps ({info['cpu']}, load {info['load_average_1min']})",
        ["variant", "samples/s", "speed-up", "s/step", "peak memory (MB)", "loss check"],
        rows,
    )
    for name, result in results.items():
        if "profile" in result:  # printed, not kept in the JSON
            print(f"\n{VARIANTS[name]['label']}, one step's top operators by own time:\n{result.pop('profile')}")
    print(f"\ngoal: >= {ORIGINAL_SAMPLES_PER_S} samples/s (the original on an A100)")
    best = {}  # the baseline always runs, so there is always a full fine-tune
    for kind, is_lora in (("full fine-tune (the original's trainable set)", False), ("LoRA", True)):
        rates = [run["samples_per_s"] for name, run in results.items() if VARIANTS[name].get("lora", False) == is_lora]
        if rates:
            best[is_lora] = max(rates)
            verdict = "met" if best[is_lora] >= ORIGINAL_SAMPLES_PER_S else "missed"
            print(f"  {kind}: best {best[is_lora]:.2f} ({verdict})")
    recipe_s = ORIGINAL_RECIPE_SAMPLES / best[False]
    gpu_goal = f" (GPU goal < {GOAL_GPU_RECIPE_S:g} s: {'met' if recipe_s < GOAL_GPU_RECIPE_S else 'missed'})"
    print(
        f"the original 20-epoch recipe ({ORIGINAL_RECIPE_SAMPLES:,} samples) at the full fine-tune's best rate: "
        f"{recipe_s / 60:.1f} min" + (gpu_goal if args.device == "cuda" else "")
    )
    if args.device == "cpu":
        ceilings = {}
        for precision, before in peak_gflops.items():
            after = roofline.matmul_gflops(torch.bfloat16 if precision == "bf16" else torch.float32)
            info[f"{precision}_matmul_gflops"] = round(max(before, after), 1)
            ceilings[precision] = print_compute_ceiling(args, info[f"{precision}_matmul_gflops"], precision)
            info[f"{precision}_ceiling_samples_per_s"] = round(ceilings[precision], 2)
        print_default_goals(results, ceilings, cpu_has_native_bf16())
    settings = {
        "batch_size": args.batch_size, "seq_len": args.seq_len, "accumulation_steps": args.accumulation_steps,
        "steps": steps,
    }
    summary = {"machine": info, **settings, "results": results}
    measure.write_json(args.json, args.command, summary)
    return summary


if __name__ == "__main__":
    main()
