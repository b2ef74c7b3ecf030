"""`moda describe one.jpg` timed as a whole process: what a user describing one photo waits for, and its memory.

    python benchmarks/cold_start.py                     # 3 runs on 2 threads, ~1 minute
    python benchmarks/cold_start.py --json benchmarks/results/cold_start_cpu.json

The checkpoint is real-size (CLIP B/32 + projector + OPT-125M, random weights) with a caption vocabulary and the
int8/bf16 weights file that train_hf.py writes, so the CLI's default CPU path (int8 decoder, shortlisted head) is
what runs; its tokenizer is the demo's small BPE one (no Hub download), which makes tokenizer loading a little
cheaper than OPT's. Each run is a fresh `python -m moda.cli describe`; the table gives the median wall time and the
peak resident memory of that process, beside the same checkpoint without the weights file (quantized at start)
and the time to import torch + transformers, MODA's model code (transformers' modeling stack: the floor under any
command that loads a model) and MODA's CLI alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Only the standard library at the top: a child's peak memory counts its parent's at fork time, so this process
# stays small until every child is measured; the checkpoint is saved by a child of its own.

WEIGHTS_FILE = "cpu_fast_weights.safetensors"  # modeling_moda.quantized_weights.WEIGHTS_FILE (no torch import here)
DEFAULT_ROW = "moda describe one.jpg (CLI default, with the weights file train_hf.py writes)"
GOAL_WALL_S = 2.0
GOAL_PEAK_MB = 1024
CAPTIONS = ["A navy blue men's striped polo shirt, ideal for casual wear.", "A red dress for women, ideal for parties."]


def save_checkpoint(folder: Path) -> None:
    """Real-size random MODA + a processor whose tokenizer's every token is in the caption vocabulary, and a photo."""
    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    from moda.demo.backbones import train_bpe_tokenizer
    from modeling_moda import MODAConfig, MODAForConditionalGeneration
    from modeling_moda.caption_vocabulary import save_caption_vocabulary
    from modeling_moda.quantized_weights import save_quantized_weights
    from processing import MODAProcessor

    tokenizer = train_bpe_tokenizer(CAPTIONS * 20, vocab_size=300)
    processor = MODAProcessor(CLIPImageProcessorPil(), tokenizer)
    model = MODAForConditionalGeneration(MODAConfig(image_token_id=processor.image_token_id))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    save_caption_vocabulary(sorted(tokenizer.get_vocab().values()), folder)
    save_quantized_weights(model, folder)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(folder / "one.jpg")


def run_process(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak resident MB of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read()[-2000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def median_run(command: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    measured = [run_process(command, env) for _ in range(runs)]
    return statistics.median(wall for wall, _ in measured), max(peak for _, peak in measured)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--save-checkpoint", type=Path, help=argparse.SUPPRESS)  # the child that saves it
    args = parser.parse_args(argv)
    if args.save_checkpoint:
        return save_checkpoint(args.save_checkpoint)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    python = [sys.executable]
    with tempfile.TemporaryDirectory() as scratch:
        print("saving a real-size random MODA checkpoint ...", file=sys.stderr)
        checkpoint = Path(scratch) / "checkpoint"
        subprocess.run([*python, __file__, "--save-checkpoint", str(checkpoint)], env=env, check=True)
        photo = checkpoint / "one.jpg"
        quantized_at_start = Path(scratch) / "without_weights_file"  # the same files, but for the int8/bf16 weights
        quantized_at_start.mkdir()
        for path in checkpoint.iterdir():
            if path.name != WEIGHTS_FILE:
                (quantized_at_start / path.name).symlink_to(path)

        def describe(folder: Path) -> list[str]:
            return [*python, "-m", "moda.cli", "describe", str(photo), "--model", str(folder), "--no-progress",
                    "--threads", str(args.threads)]  # fmt: skip

        rows = {
            "import torch + transformers": [*python, "-c", "import torch, transformers"],
            "import MODA's model code (transformers' modeling stack)": [*python, "-c", "import modeling_moda"],
            "import moda.cli": [*python, "-c", "import moda.cli"],
            DEFAULT_ROW: describe(checkpoint),
            "moda describe one.jpg, no weights file (quantized at start)": describe(quantized_at_start),
        }
        results = {name: median_run(command, env, args.runs) for name, command in rows.items()}
    import measure  # imports torch: only now

    info = measure.machine("cpu", args.threads)
    measure.print_table(
        f"Cold start, median of {args.runs} processes ({info['cpu']}, {', '.join(info.get('cpu_features', []))}, "
        f"load {info['load_average_1min']}, {info['date']})",
        ["process", "wall (s)", "peak memory (MB)"],
        [[name, f"{wall:.2f}", f"{peak:.0f}"] for name, (wall, peak) in results.items()],
    )
    wall, peak = results[DEFAULT_ROW]
    print(f"\ngoal: moda describe one.jpg <= {GOAL_WALL_S:g} s: {wall:.2f} s ({'met' if wall <= GOAL_WALL_S else 'missed'})")
    print(f"goal: peak memory <= {GOAL_PEAK_MB} MB: {peak:.0f} MB ({'met' if peak <= GOAL_PEAK_MB else 'missed'})")
    summary = {"machine": info, "runs": args.runs, "results": {
        name: {"wall_s": wall, "peak_memory_mb": peak} for name, (wall, peak) in results.items()
    }}  # fmt: skip
    measure.write_json(args.json, "python " + " ".join(["benchmarks/cold_start.py", *(argv or sys.argv[1:])]), summary)
    return summary


if __name__ == "__main__":
    main()
