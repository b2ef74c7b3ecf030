"""The caption vocabulary: built from captions, saved beside a checkpoint, and the LM head shortlist it drives."""

import copy
import json

import pytest
import torch
from conftest import FASHION_TEXTS, GREEDY_TOKENS

from moda.describe import load_model
from modeling_moda.fast_inference import apply_cpu_fast_path
from modeling_moda.fast_inference import ShortlistHead, restrict_vocabulary
from modeling_moda.greedy_decoding import greedy_generate
from modeling_moda.caption_vocabulary import (
    VOCABULARY_FILE,
    build_caption_vocabulary,
    load_caption_vocabulary,
    save_caption_vocabulary,
)

NEW_TOKENS = GREEDY_TOKENS


def test_vocabulary_holds_every_caption_token_and_eos(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    vocabulary = build_caption_vocabulary(tokenizer, FASHION_TEXTS[:3])
    assert vocabulary == sorted(set(vocabulary))
    assert tokenizer.eos_token_id in vocabulary
    for caption in FASHION_TEXTS[:3]:
        assert set(tokenizer(caption, add_special_tokens=False)["input_ids"]) <= set(vocabulary)
    assert len(vocabulary) < len(build_caption_vocabulary(tokenizer, FASHION_TEXTS)) < len(tokenizer)


def test_save_and_load_round_trip(tmp_path, tiny_processor):
    vocabulary = build_caption_vocabulary(tiny_processor.tokenizer, FASHION_TEXTS)
    save_caption_vocabulary(vocabulary, tmp_path)
    assert load_caption_vocabulary(tmp_path) == vocabulary
    (tmp_path / "trained_elsewhere").mkdir()
    assert load_caption_vocabulary(tmp_path / "trained_elsewhere") is None


@pytest.mark.parametrize("content", ["not json", json.dumps({"tokens": [1]}), json.dumps({"token_ids": [1, -2]})])
def test_a_broken_vocabulary_file_is_named(tmp_path, content):
    (tmp_path / VOCABULARY_FILE).write_text(content)
    with pytest.raises(ValueError, match=VOCABULARY_FILE):
        load_caption_vocabulary(tmp_path)


def test_shortlist_keeps_greedy_descriptions_and_never_writes_other_tokens(tiny_model, photo_batch, fp32_tokens):
    written = sorted(set(fp32_tokens[:, photo_batch["input_ids"].shape[1] :].flatten().tolist()))
    shortlisted = restrict_vocabulary(copy.deepcopy(tiny_model), written)
    assert isinstance(shortlisted.language_model.get_output_embeddings(), ShortlistHead)
    with torch.inference_mode():
        generated = shortlisted.generate(**photo_batch, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert torch.equal(generated, fp32_tokens)
        assert torch.equal(greedy_generate(shortlisted, **photo_batch, max_new_tokens=NEW_TOKENS), fp32_tokens)
        full = tiny_model(**photo_batch).logits
        short = shortlisted(**photo_batch).logits
    kept = torch.tensor(written + [tiny_model.generation_config.eos_token_id])
    assert short.shape == full.shape
    torch.testing.assert_close(short[..., kept], full[..., kept])
    others = torch.ones(full.shape[-1], dtype=torch.bool)
    others[kept] = False
    assert (short[..., others] == torch.finfo(short.dtype).min).all()


def test_a_smaller_shortlist_changes_only_what_it_must(tiny_model, photo_batch, fp32_tokens):
    """Dropping a token the model wrote forces another choice there: the shortlist is really applied."""
    prompt_length = photo_batch["input_ids"].shape[1]
    written = set(fp32_tokens[:, prompt_length:].flatten().tolist())
    dropped = fp32_tokens[0, prompt_length].item()
    model = restrict_vocabulary(copy.deepcopy(tiny_model), sorted(written - {dropped}))
    with torch.inference_mode():
        tokens = model.generate(**photo_batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert not (tokens[:, prompt_length:] == dropped).any()
    unaffected = ~(fp32_tokens[:, prompt_length:] == dropped).any(dim=1)
    assert torch.equal(tokens[unaffected], fp32_tokens[unaffected])


def test_shortlist_rejects_ids_outside_the_vocabulary(tiny_model):
    with pytest.raises(ValueError, match="subset"):
        restrict_vocabulary(copy.deepcopy(tiny_model), [tiny_model.config.text_config.vocab_size + 5])


def test_int8_with_shortlist_keeps_the_shortlist_fp32(tiny_model, photo_batch, fp32_tokens):
    written = sorted(set(fp32_tokens.flatten().tolist()))
    fast = apply_cpu_fast_path(copy.deepcopy(tiny_model), "int8", vocabulary=written)
    head = fast.language_model.get_output_embeddings()
    assert isinstance(head, ShortlistHead)
    assert type(head.shortlist) is torch.nn.Linear and head.shortlist.weight.dtype == torch.float32
    assert "quantized" in type(fast.get_decoder().layers[0].fc1).__module__
    with torch.inference_mode():
        tokens = greedy_generate(fast, **photo_batch, max_new_tokens=NEW_TOKENS)
    assert set(tokens[:, photo_batch["input_ids"].shape[1] :].flatten().tolist()) <= set(written) | {
        tiny_model.generation_config.pad_token_id
    }


def test_cli_loader_uses_the_checkpoint_vocabulary(tmp_path, tiny_checkpoint, tiny_processor):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    for path in tiny_checkpoint.iterdir():
        (checkpoint / path.name).write_bytes(path.read_bytes())
    save_caption_vocabulary(build_caption_vocabulary(tiny_processor.tokenizer, FASHION_TEXTS), checkpoint)
    int8, _ = load_model(str(checkpoint), fast="int8")
    full, _ = load_model(str(checkpoint), fast="int8", full_vocabulary=True)
    plain, _ = load_model(str(tiny_checkpoint), fast="int8")
    assert isinstance(int8.language_model.get_output_embeddings(), ShortlistHead)
    assert not isinstance(full.language_model.get_output_embeddings(), ShortlistHead)
    assert not isinstance(plain.language_model.get_output_embeddings(), ShortlistHead)


def screened_and_plain(rows: torch.Tensor) -> tuple[ShortlistHead, ShortlistHead]:
    head = torch.nn.Linear(rows.shape[1], rows.shape[0], bias=False)
    with torch.no_grad():
        head.weight.copy_(rows)
    ids = list(range(rows.shape[0]))
    return ShortlistHead(head, ids, screen=True), ShortlistHead(head, ids)


@pytest.mark.parametrize("scale", [0.02, 1.0, 30.0])
def test_a_screened_head_picks_the_fp32_heads_argmax(scale):
    """bf16 screening with fp32 rescoring gives the fp32 argmax at any weight scale, where bf16 alone would not:
    a few candidates are rescored, and a near-tie of more rows than it rescores is scored in fp32 throughout."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(600, 64, generator=generator) * scale
    rows[300:340] = rows[7] + torch.randn(40, 64, generator=generator) * scale * 1e-4  # 41 near-copies of row 7
    screened, plain = screened_and_plain(rows)
    full_scorings = []
    screened.shortlist.register_forward_hook(lambda *_: full_scorings.append(1))
    direction = rows[7] / rows[7].norm()
    random_positions = torch.randn(2, 50, 64, generator=generator)
    random_positions -= (random_positions @ direction)[..., None] * direction  # row 7's copies score 0: never tied
    near_ties = direction * 8 + torch.randn(10, 64, generator=generator) * 0.01
    with torch.inference_mode():
        for hidden, scored_in_full in ((random_positions, 0), (near_ties, 1)):
            expected = plain.shortlist(hidden).argmax(-1)
            assert torch.equal(screened.best_tokens(hidden), expected)
            assert torch.equal(plain.best_tokens(hidden), expected)
            assert len(full_scorings) == scored_in_full
            rough, slack = screened.screen_bounds(hidden.reshape(-1, 64))
            assert ((plain.shortlist(hidden).reshape(-1, 600) - rough).abs() <= slack).all()  # a true bound
    assert set(expected.tolist()) <= {7, *range(300, 340)}


def test_the_lean_loop_with_a_screened_head_writes_generates_tokens(tiny_model, photo_batch, fp32_tokens):
    written = sorted(set(fp32_tokens.flatten().tolist()))
    screened = apply_cpu_fast_path(copy.deepcopy(tiny_model), "int8", vocabulary=written, screen_head=True)
    plain = apply_cpu_fast_path(copy.deepcopy(tiny_model), "int8", vocabulary=written, screen_head=False)
    assert screened.language_model.get_output_embeddings().screen_weight.dtype == torch.bfloat16
    assert plain.language_model.get_output_embeddings().screen_weight is None
    with torch.inference_mode():
        lean = greedy_generate(screened, **photo_batch, max_new_tokens=NEW_TOKENS)
        assert torch.equal(lean, screened.generate(**photo_batch, max_new_tokens=NEW_TOKENS, do_sample=False))
        assert torch.equal(lean, greedy_generate(plain, **photo_batch, max_new_tokens=NEW_TOKENS))
