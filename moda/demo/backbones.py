"""Small random backbones and a BPE tokenizer trained on local text: MODA's offline stand-ins.

No machine here reaches the Hub, so the demo and the tests build tiny versions of MODA's two backbones
(a CLIP model and an OPT causal LM, with OPT's special-token layout) and save them as ordinary checkpoints.
Everything downstream then runs the real loading code: `from_backbones`, `from_pretrained`, Auto classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
)

# OPT's special tokens and their ids: <s> 0, <pad> 1, </s> 2 (BOS and EOS), <unk> 3.
OPT_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]


@dataclass
class TinySizes:
    """Sizes of the stand-in backbones; the defaults keep a forward pass in the milliseconds."""

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 32
    vision_layers: int = 2
    projection_dim: int = 16
    text_hidden: int = 32
    text_layers: int = 2
    heads: int = 2
    vocab_size: int = 300


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style, as OPT uses) that prepends `</s>` like OPT's does."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=OPT_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def save_tiny_backbones(out_dir: str | Path, texts: Iterable[str], sizes: TinySizes | None = None) -> tuple[Path, Path]:
    """Saves a tiny CLIP checkpoint (+ image processor) and a tiny OPT (+ tokenizer); returns both folders."""
    sizes = sizes or TinySizes()
    out_dir = Path(out_dir)
    vision_dir, text_dir = out_dir / "vision", out_dir / "text"

    clip = CLIPModel(
        CLIPConfig(
            vision_config={
                "hidden_size": sizes.vision_hidden,
                "intermediate_size": 4 * sizes.vision_hidden,
                "num_hidden_layers": sizes.vision_layers,
                "num_attention_heads": sizes.heads,
                "image_size": sizes.image_size,
                "patch_size": sizes.patch_size,
            },
            text_config={
                "hidden_size": sizes.vision_hidden,
                "intermediate_size": 4 * sizes.vision_hidden,
                "num_hidden_layers": 1,
                "num_attention_heads": sizes.heads,
                "vocab_size": 64,
            },
            projection_dim=sizes.projection_dim,
        )
    )
    clip.save_pretrained(vision_dir)
    CLIPImageProcessorPil(
        size={"shortest_edge": sizes.image_size},
        crop_size={"height": sizes.image_size, "width": sizes.image_size},
    ).save_pretrained(vision_dir)

    tokenizer = train_bpe_tokenizer(texts, vocab_size=sizes.vocab_size)
    vocab_size = len(tokenizer) + 8  # spare rows, as OPT has, so `<image>` fits without a resize
    language_model = OPTForCausalLM(
        OPTConfig(
            vocab_size=vocab_size,
            hidden_size=sizes.text_hidden,
            word_embed_proj_dim=sizes.text_hidden,
            num_hidden_layers=sizes.text_layers,
            ffn_dim=4 * sizes.text_hidden,
            num_attention_heads=sizes.heads,
            max_position_embeddings=256,
            bos_token_id=2,
            eos_token_id=2,
            pad_token_id=1,
        )
    )
    language_model.save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    return vision_dir, text_dir
