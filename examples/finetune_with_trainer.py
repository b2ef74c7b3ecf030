"""Fine-tune a saved MODA on your own photos with a plain `Trainer` and LoRA (docs/finetuning.md explains each step).

    python examples/finetune_with_trainer.py --model outputs/demo --data my_photos --output_dir outputs/mine

`--data` is an imagefolder: the photos and a metadata.jsonl of {"file_name": "1.jpg", "description": "..."} lines.
"""

import argparse

from datasets import load_dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModel, AutoProcessor, Trainer, TrainingArguments

from moda.fast_path_files import write_fast_path_files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a saved MODA: a folder or a Hub id")
    parser.add_argument("--data", required=True, help="an imagefolder with a description per photo")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max_steps", type=int, default=-1, help="stop after this many steps (-1: --epochs)")
    args = parser.parse_args(argv)

    model = AutoModel.from_pretrained(args.model, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    dataset = load_dataset("imagefolder", data_dir=args.data, split="train")  # columns: image, description

    def collate(rows: list[dict]):  # labels: the description and EOS; -100 on the image, BOS and pad positions
        images, texts = [row["image"] for row in rows], [row["description"] for row in rows]
        return processor(images=images, text=texts, return_labels=True)

    # LoRA on the language model's attention only (the CLIP tower's layers have the same names); projector in full
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=r".*language_model\..*\.(q_proj|k_proj|v_proj|out_proj)",
                      modules_to_save=["projector"], task_type="CAUSAL_LM")  # adapters: AutoPeftModelForCausalLM
    model = get_peft_model(model, lora)
    training_args = TrainingArguments(
        args.output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps, per_device_train_batch_size=8,
        learning_rate=1e-3, remove_unused_columns=False,  # keep image and description: the collator reads them
    )
    Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collate).train()

    model = model.merge_and_unload()  # a plain MODA again: loads with AutoModel alone, and `moda describe` reads it
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    write_fast_path_files(args.output_dir, dataset["description"])  # caption_vocabulary.json, caption_drafts.json


if __name__ == "__main__":
    main()
