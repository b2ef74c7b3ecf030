"""How often the fast CPU paths write the same description as fp32 greedy, on a trained checkpoint.

    python benchmarks/agreement.py --model outputs/demo --images outputs/demo/catalog --limit 200

Random weights (the speed benchmarks) say nothing about agreement: near-tied logits flip at random. A trained
MODA is what users run, so this compares its fp32 greedy descriptions with each fast mode's, batched and one
image at a time, and prints the rate and every description that differs. The drafts mode (what `moda describe`
runs for a single image) also counts the caption-draft guesses the model kept: benchmarks/inference.py replays
that share on the real-size model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/...` from a fresh clone

from moda.catalogue_rows import find_images  # noqa: E402
from moda.describe import describe_images, load_model  # noqa: E402
from processing import load_rgb_image  # noqa: E402
from measure import machine  # noqa: E402
from simulated_drafter import counting_passes  # noqa: E402

# mode -> (load_model options, describe_images through generate_fast). "cli" is what `moda describe` runs by
# default on this CPU (int8 decoder, caption vocabulary, drafts for single images, the vision tower at
# `--vision auto`: bf16 where bf16 is native, else fp32); the "vision-*" modes are each CPU kind's choice made
# explicit. Drafts apply to single images, so a drafts mode's batched column is its mode without drafts.
NO_DRAFTS = {"drafts": False}
INT8 = {"fast": "int8", "vision": "fp32"}
MODES = {
    "cli": ({"fast": "int8"}, True),
    "cli-no-drafts": ({"fast": "int8", **NO_DRAFTS}, True),
    "vision-fp32": ({**INT8}, True),
    "vision-bf16": ({**INT8, "vision": "bf16"}, True),
    "vision-int8": ({**INT8, "vision": "int8"}, True),
    "int8-generate": ({**INT8, **NO_DRAFTS}, False),
    "int8-full-vocabulary": ({**INT8, "full_vocabulary": True, **NO_DRAFTS}, True),
    "bf16": ({"fast": "bf16", **NO_DRAFTS}, True),
}


class CountingDrafter:
    """Wraps a drafter for one image at a time; counts the guesses the model kept and the guesses it rejected.

    Between two calls for the same description its text grows by the kept guesses plus the model's own token; the
    first guess not kept is the one that was rejected (guesses after it were never checked).
    """

    def __init__(self, drafter):
        self.drafter, self.kept, self.rejected = drafter, 0, 0
        self.last: tuple[list[int], list[int]] | None = None

    def draft(self, tokens, count: int) -> list[int]:
        if self.last is not None:
            text, guesses = self.last
            if len(tokens) > len(text) and list(tokens[: len(text)]) == text:
                kept = len(tokens) - len(text) - 1
                self.kept += kept
                self.rejected += kept < len(guesses)
        guesses = self.drafter.draft(tokens, count)
        self.last = (list(tokens), guesses)
        return guesses

    @property
    def acceptance(self) -> float:
        return self.kept / max(1, self.kept + self.rejected)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a trained MODA checkpoint folder")
    parser.add_argument("--images", required=True, nargs="+", help="image files or folders")
    parser.add_argument("--limit", type=int, default=200, help="images compared (the last ones found)")
    parser.add_argument("--modes", nargs="+", default=["cli"], choices=list(MODES))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    images = [load_rgb_image(path) for path in find_images(args.images)[-args.limit :]]
    reference_model, processor = load_model(args.model, fast="none")
    reference = describe_images(reference_model, processor, images, args.batch_size, do_sample=False)

    results = {"model": args.model, "images": len(images), "machine": machine("cpu", args.threads), "modes": {}}
    print(f"| mode | same as fp32, batch {args.batch_size} | same as fp32, batch 1 |\n|---|---|---|")
    for mode in args.modes:
        options, fast = MODES[mode]
        model, _ = load_model(args.model, **options)
        drafter = None
        if options.get("drafts", True):
            if model.caption_drafter is None:
                raise SystemExit(f"{args.model} has no caption_drafts.json (train_hf.py writes it)")
            drafter = model.caption_drafter = CountingDrafter(model.caption_drafter)
        batched = describe_images(model, processor, images, args.batch_size, fast, do_sample=False)
        with counting_passes(model) as passes:
            single = describe_images(model, processor, images, 1, fast, do_sample=False)
        rates = [sum(a == b for a, b in zip(reference, texts)) / len(images) for texts in (batched, single)]
        differing = [
            {"batch": size, "fp32": a, mode: b}
            for size, texts in ((args.batch_size, batched), (1, single))
            for a, b in zip(reference, texts)
            if a != b
        ]
        results["modes"][mode] = {"same_batched": rates[0], "same_single": rates[1], "differing": differing}
        if drafter:
            tokens = processor.tokenizer(single, add_special_tokens=False)["input_ids"]
            results["modes"][mode].update(
                guess_acceptance=drafter.acceptance,
                passes_per_description=passes[0] / len(images),
                # the passes it would take without drafts: one per token, EOS included
                tokens_per_description=sum(len(ids) + 1 for ids in tokens) / len(tokens),
            )
        print(f"| {mode} | {rates[0]:.1%} | {rates[1]:.1%} |")
    for mode, result in results["modes"].items():
        for pair in result["differing"]:
            print(f"{mode} differs at batch {pair['batch']}: {pair['fp32']!r} -> {pair[mode]!r}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
