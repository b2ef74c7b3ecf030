"""The drafts benchmark's stand-ins: a decisive random model and guesses right at a set rate, on the tiny model."""

import copy
import sys
from pathlib import Path

import pytest
import torch

from modeling_moda.fast_inference import apply_cpu_fast_path
from modeling_moda.greedy_decoding import greedy_generate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from simulated_drafter import SimulatedDrafter, counting_passes, make_decisive  # noqa: E402

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def decisive_int8(tiny_model):
    model = copy.deepcopy(tiny_model)
    model.generation_config.eos_token_id = None
    return apply_cpu_fast_path(make_decisive(model, token_id=7), "int8")


def test_the_decisive_model_writes_its_token_for_every_photo(decisive_int8, photo_batch):
    tokens = greedy_generate(decisive_int8, **photo_batch, max_new_tokens=NEW_TOKENS)
    assert (tokens[:, photo_batch["input_ids"].shape[1] :] == 7).all()


@pytest.mark.parametrize("acceptance", [0.0, 0.5, 1.0])
def test_guesses_are_kept_at_the_set_rate_and_never_change_the_text(decisive_int8, photo_batch, acceptance):
    inputs = {key: value[:1] for key, value in photo_batch.items()}
    reference = greedy_generate(decisive_int8, **inputs, max_new_tokens=NEW_TOKENS)
    drafter = SimulatedDrafter(reference[0].tolist(), acceptance, seed=0)
    with counting_passes(decisive_int8) as counted:
        drafted = greedy_generate(decisive_int8, **inputs, max_new_tokens=NEW_TOKENS, drafter=drafter)
    assert torch.equal(drafted, reference)
    passes = counted[0]
    if acceptance == 0.0:
        assert passes == NEW_TOKENS  # every guess wrong: one token per pass
    elif acceptance == 1.0:  # the prompt's pass with 8 right guesses + the model's token, then the last 6 + 1
        assert passes == 2
    else:
        assert 2 < passes < NEW_TOKENS
