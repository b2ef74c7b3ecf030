"""Greedy descriptions in a lean decoding loop: the same tokens as `model.generate`, fewer Python calls per token.

    sequences = model.generate_fast(**processor(images=photos))   # the documented entry point
    sequences = greedy_generate(model, **processor(images=photos), max_new_tokens=32)   # the loop itself

Why: a MODA description is 32 tokens from a 125M decoder, so on a CPU every token pays for OPT's module
tree, the `DynamicCache` concatenations and `generate`'s logits processors and stopping criteria. This loop calls
the model's own submodules (its layer norms and linear layers, quantized or not) directly, writes keys and values
into one preallocated cache, and picks the argmax (benchmarks/inference.py's "lean" rows measure it). It stays
beside `generate`'s own path for drafts (`prompt_lookup_num_tokens`) on the evidence of benchmarks/inference.py's
"cli"/"cli-direct" against "cli-generate" and "drafts"/"drafts-direct" against "drafts-generate" rows.

Given a `drafter` (e.g. `caption_drafts.CaptionDrafter`), each pass also checks the tokens it guesses
come next: one pass reads the weights once for several tokens, and only the guesses the model itself would have
written are kept, so the text is still the model's greedy text (speculative decoding, with a lookup table as the
draft model; benchmarks/inference.py's "drafts" rows).

It covers what `moda describe` runs, greedy decoding of a pre-LayerNorm OPT decoder (OPT-125M, MODA's language
model) with only length and special-token settings: `lean_generation_config` resolves the generation config as
`generate` does (the checkpoint's `generation_config.json` with the call's arguments over it) and says when, and
`model.generate_fast` sends everything else to `model.generate`.
tests/test_greedy_decoding.py and tests/test_caption_drafts.py check it writes the tokens `generate` writes.
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig

from .caption_drafts import check_guesses, next_draft_count
from .fast_inference import ShortlistHead, eos_token_ids


class Drafter(Protocol):
    """Guesses the tokens that follow `tokens` (a row's prompt and text so far): at most `count`, maybe none."""

    def draft(self, tokens: Sequence[int], count: int) -> list[int]: ...


def supports_greedy_generate(model: nn.Module) -> bool:
    """True when `model`'s language model is a pre-LayerNorm OPT decoder, the one architecture this loop implements."""
    config = model.config.text_config
    return config.model_type == "opt" and config.do_layer_norm_before and not config._remove_final_layer_norm


class KeyValueCache:
    """Keys and values of every layer in one tensor each, allocated once for the longest sequence."""

    def __init__(self, layers: int, batch: int, heads: int, max_length: int, head_dim: int, like: torch.Tensor):
        shape = (layers, batch, heads, max_length, head_dim)
        self.keys = like.new_zeros(shape)
        self.values = like.new_zeros(shape)

    def update(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor):
        """Stores one step's keys/values at `start` and returns all keys/values up to the step's end."""
        end = start + keys.shape[2]
        self.keys[layer, :, :, start:end] = keys
        self.values[layer, :, :, start:end] = values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


def decoder_layer_step(
    layer: nn.Module, hidden: torch.Tensor, cache: KeyValueCache, index: int, start: int, mask: torch.Tensor | None
) -> torch.Tensor:
    """OPT's pre-LayerNorm decoder layer (self-attention, then the MLP) on new positions `start:start + S`."""
    attention = layer.self_attn
    batch, length, width = hidden.shape
    heads, head_dim = attention.num_heads, attention.head_dim

    def split_heads(states: torch.Tensor) -> torch.Tensor:
        return states.view(batch, length, heads, head_dim).transpose(1, 2)

    normed = layer.self_attn_layer_norm(hidden)
    if hasattr(attention, "qkv_proj"):  # the int8 fast path's stacked projections (fast_inference.py): one matmul
        query, new_keys, new_values = attention.qkv_proj(normed).split(width, -1)
    else:
        query, new_keys, new_values = attention.q_proj(normed), attention.k_proj(normed), attention.v_proj(normed)
    query = split_heads(query * attention.scaling)  # scaled before SDPA, as OPTAttention does
    new_keys, new_values = split_heads(new_keys), split_heads(new_values)
    keys, values = cache.update(index, start, new_keys, new_values)
    causal = mask is None and length > 1
    attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, is_causal=causal, scale=1.0)
    hidden = hidden + attention.out_proj(attended.transpose(1, 2).reshape(batch, length, width))
    return hidden + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))))


def attention_mask_for(
    key_is_real: torch.Tensor, start: int, length: int, padded: bool
) -> torch.Tensor | None:
    """Boolean SDPA mask (B, 1, S, T) for queries `start:start + S`: causal, padding keys hidden.

    None when SDPA's `is_causal` path (aligned to the first key) is right: nothing padded and the queries start at
    the first key or are a single one, as in transformers. A padding query sees itself, so that its (unused) output
    stays finite instead of NaN.
    """
    if not padded and (start == 0 or length == 1):
        return None
    total = start + length
    positions = torch.arange(total, device=key_is_real.device)
    query_positions = positions[start:].unsqueeze(1)
    causal = positions.unsqueeze(0) <= query_positions
    visible = causal & key_is_real[:, None, None, :total]
    return visible | (positions.unsqueeze(0) == query_positions)


def best_tokens(head: nn.Module, hidden: torch.Tensor) -> torch.LongTensor:
    """The LM head's argmax; a `ShortlistHead` is scored on its own rows, never widened to the whole vocabulary."""
    if isinstance(head, ShortlistHead):
        return head.best_tokens(hidden)
    return head(hidden).argmax(-1)


def guesses_kept(
    predicted: torch.LongTensor, guesses: torch.LongTensor, guessed: torch.Tensor, rows: torch.Tensor
) -> int:
    """How many leading guesses every row in `rows` would have written itself: the tokens this pass may keep.

    `predicted[:, i]` is the model's token after the pass's i-th input, whose input `i + 1` is guess `i`;
    `guessed` says which guess slots a row filled (rows may have fewer guesses than others).
    """
    agreed = (predicted[:, :-1] == guesses) & guessed
    leading = agreed.long().cumprod(1).sum(1)
    return int(leading[rows].min()) if rows.any() else 0


def draft_guesses(
    drafter: Drafter | None, texts: list[list[int]], count: int, pad_id: int, device: torch.device,
    rows: list[bool] | None = None, vocab_size: int | None = None,
) -> tuple[torch.LongTensor, torch.Tensor]:
    """Each row's guesses for its next tokens (padded to the longest row) and which slots are real guesses.

    Only `rows` (default: all) are asked; a guess outside `vocab_size` is an error, not an embedding index error.
    """
    if drafter is None or count == 0:  # nothing to ask: skip the per-row work
        empty = torch.empty(len(texts), 0, dtype=torch.long, device=device)
        return empty, empty.bool()
    rows = [True] * len(texts) if rows is None else rows
    guesses = [drafter.draft(text, count)[:count] if asked else [] for text, asked in zip(texts, rows)]
    if vocab_size is not None:
        check_guesses([token for row in guesses for token in row], vocab_size)
    width = max(map(len, guesses))
    padded = torch.tensor([row + [pad_id] * (width - len(row)) for row in guesses], dtype=torch.long, device=device)
    guessed = torch.arange(width, device=device) < torch.tensor([len(row) for row in guesses], device=device)[:, None]
    return padded.view(len(texts), width), guessed


@torch.inference_mode()
def greedy_generate(
    model: nn.Module,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    image_embeds: torch.Tensor | None = None,
    max_new_tokens: int | None = None,
    drafter: Drafter | None = None,
    draft_tokens: int = 8,
    generation_config: GenerationConfig | None = None,
) -> torch.LongTensor:
    """`model.generate(..., do_sample=False, num_beams=1)` for a MODA model with an OPT decoder: prompt + new tokens.

    Stops at the generation config's EOS (rows that finished early are filled with its pad token, else its first
    EOS, as `generate` does) or after `max_new_tokens` (default: the generation config's). `generation_config`
    defaults to the model's. With a `drafter`, every pass (the prompt's too) also checks
    up to `draft_tokens` of its guesses; a batch keeps the guesses all its unfinished rows agree with. A wrong guess
    still costs compute (a 9-token pass of OPT-125M takes about 1.5x a 1-token pass on 2 CPU cores), so the number
    asked for adapts: it halves after a pass that kept no guess (down to 1) and doubles, up to `draft_tokens`, after
    one that kept them all.
    """
    if not supports_greedy_generate(model):
        raise ValueError(
            f"greedy_generate implements pre-LayerNorm OPT decoders; this model's language model is "
            f"{model.config.text_config.model_type!r}: use model.generate"
        )
    generation_config = model.generation_config if generation_config is None else generation_config
    max_new_tokens = generation_config.max_new_tokens if max_new_tokens is None else max_new_tokens
    if max_new_tokens is None or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1 (argument or generation config), got {max_new_tokens}")
    if draft_tokens < 0:
        raise ValueError(f"draft_tokens must be 0 or more, got {draft_tokens}")
    device = input_ids.device
    eos_ids = torch.tensor(eos_token_ids(generation_config), dtype=torch.long, device=device)
    pad_id = next(
        (token for token in (generation_config.pad_token_id, *eos_ids.tolist()) if token is not None), 0
    )
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)

    decoder = model.language_model.get_decoder()
    embeddings, _ = model.embed_inputs(input_ids, pixel_values, image_embeds)
    batch, prompt_length = input_ids.shape
    total = prompt_length + max_new_tokens
    key_is_real = torch.ones(batch, total, dtype=torch.bool, device=device)
    key_is_real[:, :prompt_length] = attention_mask.bool()
    padded = not bool(key_is_real.all())
    # OPT's positions count real tokens only (left padding shifts them), offset by its position embedding's 2.
    positions = key_is_real.long().cumsum(1) * key_is_real - 1 + decoder.embed_positions.offset
    config = decoder.config
    cache = KeyValueCache(
        len(decoder.layers), batch, config.num_attention_heads, total,
        config.hidden_size // config.num_attention_heads, like=embeddings,
    )
    head = model.language_model.get_output_embeddings()
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    texts = input_ids.tolist()  # what the drafter reads (kept up to date only when there is one)
    new_tokens = []
    asked = draft_tokens  # the prompt's pass checks guesses too: a description's first words are the likeliest
    guesses, guessed = draft_guesses(drafter, texts, min(asked, max_new_tokens - 1), pad_id, device,
                                     vocab_size=config.vocab_size)  # fmt: skip
    start, hidden = 0, torch.cat([embeddings, decoder.embed_tokens(guesses).to(embeddings.dtype)], 1)
    while True:
        length = hidden.shape[1]
        if decoder.project_in is not None:
            hidden = decoder.project_in(hidden)
        hidden = hidden + decoder.embed_positions.weight[positions[:, start : start + length]]
        mask = attention_mask_for(key_is_real, start, length, padded)
        for index, layer in enumerate(decoder.layers):
            hidden = decoder_layer_step(layer, hidden, cache, index, start, mask)
        scored = decoder.final_layer_norm(hidden[:, length - guesses.shape[1] - 1 :])  # the last token and guesses
        if decoder.project_out is not None:
            scored = decoder.project_out(scored)
        predicted = best_tokens(head, scored)
        kept = guesses_kept(predicted, guesses, guessed, unfinished)
        for tokens in predicted[:, : kept + 1].unbind(1):
            tokens = torch.where(unfinished, tokens, torch.full_like(tokens, pad_id))
            new_tokens.append(tokens)
            unfinished &= ~torch.isin(tokens, eos_ids)
            if not unfinished.any():  # as generate: the sequences end with the last row's EOS
                break
        if not unfinished.any() or len(new_tokens) == max_new_tokens:
            break
        if drafter is not None:
            for text, row in zip(texts, predicted[:, : kept + 1].tolist()):
                text.extend(row)
        if start:  # the prompt's guesses are read off the text alone, blind to the image: they say little of later ones
            asked = next_draft_count(asked, guesses.shape[1], kept, draft_tokens)
        start += length - (guesses.shape[1] - kept)  # the cache keeps the inputs up to the last kept guess
        count = min(asked, max_new_tokens - len(new_tokens) - 1)  # `asked` never passes draft_tokens
        guesses, guessed = draft_guesses(
            drafter, texts, count, pad_id, device, unfinished.tolist(), config.vocab_size
        )
        hidden = decoder.embed_tokens(torch.cat([tokens[:, None], guesses], 1))
    return torch.cat([input_ids, torch.stack(new_tokens, 1)], 1)


# What `greedy_generate` reads: the inputs, and generation settings that change no token when they are plain
LEAN_INPUTS = {"input_ids", "attention_mask", "pixel_values", "image_embeds"}
LEAN_SETTINGS = {
    "max_new_tokens", "max_length", "eos_token_id", "pad_token_id", "bos_token_id", "use_cache",
    "transformers_version", "_from_model_config",
}


def lean_generation_config(
    model: nn.Module, generation_config: GenerationConfig | None, kwargs: Mapping
) -> GenerationConfig | None:
    """The generation config `model.generate(generation_config=generation_config, **kwargs)` would run with, when
    `greedy_generate` writes the same tokens under it; None when only `generate` can.

    That is: an OPT decoder, only MODA's inputs, a cache, a `max_new_tokens`, and every other setting at its
    plain-greedy default once `model.generation_config` and the global defaults are merged in, as `generate`
    merges them. A `repetition_penalty` in generation_config.json, sampling, beams, an assistant model, a logits
    processor, a streamer or `return_dict_in_generate` all leave it to `generate`.
    """
    if not supports_greedy_generate(model):
        return None
    resolved, model_kwargs = model._prepare_generation_config(generation_config, **kwargs)
    if "input_ids" not in model_kwargs or not set(model_kwargs) <= LEAN_INPUTS:
        return None
    plain = GenerationConfig()
    plain.update(**plain._get_default_generation_params())
    defaults = plain.to_dict()
    changed = [
        name
        for name, value in resolved.to_dict().items()
        if name not in LEAN_SETTINGS and value != defaults.get(name) and (value or defaults.get(name))
    ]
    if changed or not resolved.use_cache or resolved.max_new_tokens is None:
        return None
    return resolved


__all__ = ["Drafter", "greedy_generate", "lean_generation_config", "supports_greedy_generate"]
