"""Caption draft tables (built, saved, loaded) and the decoders that check their guesses, greedy_generate and
generate(prompt_lookup_num_tokens=...): fewer passes, the same tokens."""

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import FASHION_TEXTS, count_draft_calls, make_photo
from transformers import pipeline
from transformers.generation.candidate_generator import AssistedCandidateGenerator, PromptLookupCandidateGenerator

from modeling_moda import MODAForConditionalGeneration
from modeling_moda.greedy_decoding import draft_guesses, greedy_generate, guesses_kept
from modeling_moda.caption_drafts import (
    DRAFTS_FILE,
    CaptionDraftCandidateGenerator,
    CaptionDrafter,
    build_caption_drafter,
    load_caption_drafter,
    next_draft_count,
    save_caption_drafter,
)
from processing import MODAProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from simulated_drafter import counting_passes  # noqa: E402  the passes both benchmarks count

NEW_TOKENS = 12
LONG_TOKENS = 24  # batch-1 runs, long enough for drafting to save most passes


class Oracle:
    """Guesses the continuation of whichever reference row starts with exactly `tokens` (none for other prefixes).

    From guess `right` on, each guess is wrong (the true token + 1); `calls` counts draft() calls (one a row a pass).
    """

    def __init__(self, sequences, right=None, vocab_size=None, ignore_count=False):
        rows = sequences.tolist()
        self.rest = {tuple(row[:i]): row[i:] for row in rows for i in range(1, len(row))}
        self.right, self.vocab_size, self.ignore_count, self.calls = right, vocab_size, ignore_count, 0

    def draft(self, tokens, count):
        self.calls += 1
        rest = self.rest.get(tuple(tokens), [])
        guesses = rest if self.ignore_count else rest[:count]
        right = len(guesses) if self.right is None else self.right
        return guesses[:right] + [(token + 1) % self.vocab_size for token in guesses[right:]]


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def no_eos_model(tiny_model):
    """The tiny fp32 model without EOS, so every row runs the full length and every guess is checked."""
    model = copy.deepcopy(tiny_model)
    model.generation_config.eos_token_id = None
    return model


@pytest.fixture(scope="module")
def photos8():
    return [make_photo(seed) for seed in range(8)]


# --- the table -------------------------------------------------------------------------------------------------------


def test_after_bos_it_guesses_the_most_frequent_first_token(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    captions = ["Black shoes for men", "Black shirt for boys", "Green shoes for boys"]
    drafter = build_caption_drafter(tokenizer, captions)
    black, green = ids(tokenizer, "Black")[0], ids(tokenizer, "Green")[0]
    assert black != green
    assert drafter.draft([tokenizer.bos_token_id], 1) == [black]
    # as the model reads a description: the image token, then BOS (a context the table never saw whole)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    assert drafter.draft([image_token, tokenizer.bos_token_id], 1) == [black]
    whole = ids(tokenizer, "Green shoes for boys")  # the one caption starting with "Green": drafted to its EOS
    assert drafter.draft([tokenizer.bos_token_id, *whole[:2]], len(whole) - 1) == whole[2:] + [tokenizer.eos_token_id]


def test_the_longest_matching_context_wins(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    men = ids(tokenizer, "Black shoes for men")
    parties = ids(tokenizer, "A dress for parties")
    for_id = ids(tokenizer, " for")[0]
    assert men[-2] == for_id == parties[parties.index(for_id)]
    after_for = parties[parties.index(for_id) + 1]
    drafter = build_caption_drafter(tokenizer, ["Black shoes for men", "A dress for parties", "A shirt for parties"])
    assert after_for != men[-1]
    assert drafter.draft([tokenizer.bos_token_id, for_id], 1) == [after_for]  # 1 token: " p" of parties wins 2:1
    assert drafter.draft(men[:-1], 1) == [men[-1]]  # 3 tokens: "shoes for" is followed by " men"
    assert build_caption_drafter(tokenizer, ["Black shoes for men"] + ["A dress for parties"] * 2, 1).draft(
        men[:-1], 1
    ) == [after_for], "with context_tokens=1 only the last token counts"


def test_ties_go_to_the_lowest_token_id(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    men, boys = ids(tokenizer, "Black shoes for men"), ids(tokenizer, "Black shoes for boys")
    fork = len(men) - 1  # both read "Black shoes for", then " men" or " b" (of "boys")
    assert men[:fork] == boys[:fork] and men[fork] != boys[fork]
    for captions in (["Black shoes for men", "Black shoes for boys"], ["Black shoes for boys", "Black shoes for men"]):
        drafter = build_caption_drafter(tokenizer, captions)
        assert drafter.draft(men[:fork], 1) == [min(men[fork], boys[fork])]


def test_draft_stops_when_no_context_matches():
    drafter = CaptionDrafter({(5,): 6, (6,): 7, (4, 5): 9}, context_tokens=2)
    assert drafter.draft([5], 4) == [6, 7]
    assert drafter.draft([4, 5], 4) == [9]  # (5, 9) and (9,) were never seen
    assert drafter.draft([8], 4) == []
    assert drafter.draft([], 4) == []
    assert drafter.draft([5], 0) == []
    assert len(drafter) == 3


def test_context_tokens_must_be_positive():
    with pytest.raises(ValueError, match="context_tokens"):
        CaptionDrafter({(1,): 2}, context_tokens=0)


# --- saved beside a checkpoint ---------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path, tiny_processor):
    drafter = build_caption_drafter(tiny_processor.tokenizer, FASHION_TEXTS, context_tokens=2)
    assert save_caption_drafter(drafter, tmp_path) == tmp_path / DRAFTS_FILE
    loaded = load_caption_drafter(tmp_path)
    assert loaded.context_tokens == 2 and loaded.next_token == drafter.next_token
    for caption in FASHION_TEXTS[:6]:
        start = [tiny_processor.tokenizer.bos_token_id, *ids(tiny_processor.tokenizer, caption)[:3]]
        for prefix in (start[:1], start):
            assert loaded.draft(prefix, 8) == drafter.draft(prefix, 8) != []
    (tmp_path / "trained_elsewhere").mkdir()
    assert load_caption_drafter(tmp_path / "trained_elsewhere") is None


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"next_token": [[1, 2]]}),
        json.dumps({"context_tokens": 0, "next_token": [[1, 2]]}),
        json.dumps({"context_tokens": "3", "next_token": [[1, 2]]}),
        json.dumps({"context_tokens": 2, "next_token": [[1, -2]]}),
        json.dumps({"context_tokens": 2, "next_token": [[1, 2, 3, 4]]}),
        json.dumps({"context_tokens": 2, "next_token": [[1]]}),
        json.dumps({"context_tokens": 2, "next_token": [[1, 2.5]]}),
        json.dumps({"context_tokens": 2, "next_token": [7]}),
        json.dumps({"context_tokens": True, "next_token": [[1, 2]]}),
        json.dumps({"context_tokens": 2, "next_token": [[True, 2]]}),
    ],
)
def test_a_broken_table_file_is_named(tmp_path, content):
    (tmp_path / DRAFTS_FILE).write_text(content)
    with pytest.raises(ValueError) as raised:
        load_caption_drafter(tmp_path)
    assert str(tmp_path / DRAFTS_FILE) in str(raised.value)


# --- the decoding loop's helpers -------------------------------------------------------------------------------------


def test_guesses_kept_counts_leading_agreement_of_unfinished_rows():
    predicted = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 8], [1, 1, 1, 1]])
    guesses = torch.tensor([[5, 6, 7], [5, 6, 7], [9, 9, 9]])
    everything = torch.ones(3, 3, dtype=torch.bool)
    assert guesses_kept(predicted, guesses, everything, torch.tensor([True, False, False])) == 3
    assert guesses_kept(predicted, guesses, everything, torch.tensor([True, True, False])) == 2
    assert guesses_kept(predicted, guesses, everything, torch.tensor([True, True, True])) == 0
    assert guesses_kept(predicted, guesses, everything, torch.zeros(3, dtype=torch.bool)) == 0
    fewer = torch.tensor([[True, True, True], [True, False, False], [True, True, True]])
    assert guesses_kept(predicted, guesses, fewer, torch.tensor([True, True, False])) == 1


def test_draft_guesses_pads_rows_and_marks_real_guesses():
    drafter = CaptionDrafter({(1,): 2, (2,): 3, (3,): 4, (7,): 8}, context_tokens=1)
    guesses, guessed = draft_guesses(drafter, [[0, 1], [6, 7], [5]], 2, pad_id=9, device=torch.device("cpu"))
    assert guesses.tolist() == [[2, 3], [8, 9], [9, 9]]
    assert guessed.tolist() == [[True, True], [True, False], [False, False]]
    for which, count in ((None, 3), (drafter, 0)):
        guesses, guessed = draft_guesses(which, [[1], [1]], count, pad_id=9, device=torch.device("cpu"))
        assert guesses.shape == guessed.shape == (2, 0)


# --- greedy_generate with a drafter ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [8, 1])
def test_drafts_never_change_the_tokens(no_eos_model, tiny_processor, photos8, rows):
    inputs = tiny_processor(images=photos8[:rows])
    new_tokens = NEW_TOKENS if rows > 1 else LONG_TOKENS
    reference = greedy_generate(no_eos_model, **inputs, max_new_tokens=new_tokens)
    with torch.inference_mode():
        assert torch.equal(reference, no_eos_model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False))
    vocab_size = no_eos_model.config.text_config.vocab_size
    drafters = {
        "oracle": Oracle(reference),
        "wrong": Oracle(reference, right=0, vocab_size=vocab_size),
        "first right": Oracle(reference, right=1, vocab_size=vocab_size),
    }
    for name, drafter in drafters.items():
        drafted = greedy_generate(no_eos_model, **inputs, max_new_tokens=new_tokens, drafter=drafter, draft_tokens=4)
        assert torch.equal(drafted, reference), name
    assert drafters["oracle"].calls <= drafters["wrong"].calls / 2, "right guesses should save passes"
    if rows == 1:
        # one pass per token when every guess is wrong (the prompt's pass asks too, the last asks nothing); the
        # oracle's passes keep 1 token and 4 guesses each, the prompt's included
        assert drafters["wrong"].calls == new_tokens - 1
        assert drafters["first right"].calls < drafters["wrong"].calls
        assert drafters["oracle"].calls <= -(-new_tokens // 5) < new_tokens // 4
    else:
        assert len({tuple(row) for row in reference[:, 2:].tolist()}) > 1, "the photos should get different text"


@pytest.mark.parametrize("rows", [8, 1])
def test_eos_inside_accepted_guesses_ends_like_generate(tiny_model, tiny_processor, photos8, rows):
    model = copy.deepcopy(tiny_model)
    model.generation_config.eos_token_id = None
    inputs = tiny_processor(images=photos8[:rows])
    free_running = greedy_generate(model, **inputs, max_new_tokens=NEW_TOKENS)
    # an EOS that row 0 first writes as its 3rd to 5th token, so it comes as a guess of the second pass (not its last)
    first_row = free_running[0, 2:].tolist()
    eos = next(token for index, token in enumerate(first_row) if 2 <= index <= 4 and token not in first_row[:index])
    model.generation_config.eos_token_id = eos
    with torch.inference_mode():
        reference = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1)
    oracle = Oracle(free_running)  # guesses past EOS too: the model's text if it had not stopped
    drafted = greedy_generate(model, **inputs, max_new_tokens=NEW_TOKENS, drafter=oracle, draft_tokens=4)
    assert drafted.shape == reference.shape and torch.equal(drafted, reference)
    if rows == 1:  # row 0's EOS came as the second pass's guess: the text ends there, in 2 passes
        assert reference[0, -1] == eos and reference.shape[1] < 2 + NEW_TOKENS and oracle.calls == 1
    else:
        assert (reference == model.generation_config.pad_token_id).any(), "some row should have finished early"


def test_left_padded_text_prompts_with_a_drafter(no_eos_model, tiny_processor, photos8):
    prompts = ["", "A red", "Black casual shoes for", "A", "", "Green sports", "A pink women's blouse", "A white"]
    inputs = tiny_processor(images=photos8, text=prompts)
    assert not inputs["attention_mask"].all(), "the prompts should need padding"
    reference = greedy_generate(no_eos_model, **inputs, max_new_tokens=NEW_TOKENS)
    with torch.inference_mode():
        assert torch.equal(reference, no_eos_model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False))
    oracle = Oracle(reference)
    assert torch.equal(greedy_generate(no_eos_model, **inputs, max_new_tokens=NEW_TOKENS, drafter=oracle), reference)
    assert oracle.calls < 8 * (NEW_TOKENS - 2)


def test_max_new_tokens_holds_whatever_the_drafter_proposes(no_eos_model, tiny_processor, photos8):
    inputs = tiny_processor(images=photos8[:3])
    longer = greedy_generate(no_eos_model, **inputs, max_new_tokens=NEW_TOKENS + 20)
    for draft_tokens in (4, 50):
        eager = Oracle(longer, ignore_count=True)  # right guesses, always far more than asked for
        drafted = greedy_generate(
            no_eos_model, **inputs, max_new_tokens=NEW_TOKENS, drafter=eager, draft_tokens=draft_tokens
        )
        assert drafted.shape == (3, 2 + NEW_TOKENS)
        assert torch.equal(drafted, longer[:, : 2 + NEW_TOKENS])


def test_draft_tokens_zero_never_asks_and_negative_is_refused(no_eos_model, tiny_processor, photos8):
    inputs = tiny_processor(images=photos8[:2])
    reference = greedy_generate(no_eos_model, **inputs, max_new_tokens=6)
    oracle = Oracle(reference)
    drafted = greedy_generate(no_eos_model, **inputs, max_new_tokens=6, drafter=oracle, draft_tokens=0)
    assert torch.equal(drafted, reference)
    assert oracle.calls == 0
    with pytest.raises(ValueError, match="draft_tokens"):
        greedy_generate(no_eos_model, **inputs, max_new_tokens=6, drafter=oracle, draft_tokens=-1)


def test_a_guess_outside_the_vocabulary_is_named(no_eos_model, tiny_processor, photos8):
    vocab_size = no_eos_model.config.text_config.vocab_size

    class Foreign:  # a table from a larger tokenizer
        def draft(self, tokens, count):
            return [vocab_size + 5]

    with pytest.raises(ValueError, match=f"token id {vocab_size + 5}, outside the model's {vocab_size}-token"):
        greedy_generate(no_eos_model, **tiny_processor(images=photos8[:1]), max_new_tokens=4, drafter=Foreign())


def test_finished_rows_are_not_asked_for_guesses(tiny_model, tiny_processor, photos8):
    model = copy.deepcopy(tiny_model)
    inputs = tiny_processor(images=photos8)
    model.generation_config.eos_token_id = None
    free_running = greedy_generate(model, **inputs, max_new_tokens=NEW_TOKENS)
    model.generation_config.eos_token_id = int(free_running[0, 4])  # row 0 (and maybe others) finishes early
    asked = []

    class Recording(Oracle):
        def draft(self, tokens, count):
            asked.append(tuple(tokens))
            return super().draft(tokens, count)

    drafted = greedy_generate(model, **inputs, max_new_tokens=NEW_TOKENS, drafter=Recording(free_running, right=0,
                              vocab_size=model.config.text_config.vocab_size))
    finished_at = 2 + drafted[0, 2:].tolist().index(model.generation_config.eos_token_id) + 1
    assert drafted.shape[1] > finished_at, "another row should run on after row 0 finished"
    row0 = tuple(drafted[0, :finished_at].tolist())
    assert not [tokens for tokens in asked if tokens[:finished_at] == row0 and len(tokens) > finished_at]


def test_guesses_asked_halve_after_a_pass_that_kept_none_and_double_after_one_that_kept_all(
    no_eos_model, tiny_processor, photos8
):
    inputs = tiny_processor(images=photos8[:1])
    reference = greedy_generate(no_eos_model, **inputs, max_new_tokens=LONG_TOKENS)

    class WrongThenRight(Oracle):
        """Wrong for its first 3 calls, then right; records how many guesses each call asked for."""

        def __init__(self):
            super().__init__(reference, vocab_size=no_eos_model.config.text_config.vocab_size)
            self.counts = []

        def draft(self, tokens, count):
            self.counts.append(count)
            self.right = 0 if len(self.counts) <= 3 else None
            return super().draft(tokens, count)

    drafter = WrongThenRight()
    drafted = greedy_generate(no_eos_model, **inputs, max_new_tokens=LONG_TOKENS, drafter=drafter, draft_tokens=8)
    assert torch.equal(drafted, reference)
    # 1 token a pass while wrong: 8 asked in the prompt's pass (blind to the image, it changes nothing), then 8 and
    # 4; then right: 2, 4, 8 and the last 3 asked (3, 5, 9 and 4 tokens a pass) make the 24
    assert drafter.counts == [8, 8, 4, 2, 4, 8, 3]


# --- generate(prompt_lookup_num_tokens=...): transformers' assisted generation with the table as the draft model -----


def generate(model, inputs, **kwargs):
    with torch.inference_mode():
        return model.generate(**inputs, do_sample=False, **kwargs)


def test_candidates_are_the_row_and_its_guesses_up_to_eos_and_the_length():
    drafter = CaptionDrafter({(5,): 6, (6,): 2, (2,): 7, (7,): 8}, context_tokens=1)  # 2 is EOS; 7, 8 come after it
    row, eos = torch.tensor([[4, 5]]), torch.tensor([2])
    for max_length, expected in ((20, [4, 5, 6, 2]), (4, [4, 5, 6]), (3, [4, 5])):  # generate adds 1 token itself
        generator = CaptionDraftCandidateGenerator(drafter, 8, max_length, vocab_size=10, eos_token_id=eos)
        candidates, logits = generator.get_candidates(row)
        assert candidates.tolist() == [expected] and logits is None
    generator = CaptionDraftCandidateGenerator(drafter, 8, 20, vocab_size=10)  # no EOS: the table runs on
    assert generator.get_candidates(row)[0].tolist() == [[4, 5, 6, 2, 7, 8]]
    assert generator.get_candidates(torch.tensor([[9]]))[0].tolist() == [[9]], "no guess: plain greedy"


def test_candidate_generator_refuses_foreign_guesses_and_a_zero_count():
    generator = CaptionDraftCandidateGenerator(CaptionDrafter({(1,): 50}, 1), 4, 20, vocab_size=10)
    with pytest.raises(ValueError, match="token id 50, outside the model's 10-token vocabulary"):
        generator.get_candidates(torch.tensor([[1]]))
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens must be at least 1"):
        CaptionDraftCandidateGenerator(CaptionDrafter({(1,): 2}, 1), 0, 20, vocab_size=10)


def test_next_draft_count_halves_after_none_kept_and_doubles_after_all_kept():
    assert next_draft_count(8, offered=8, kept=0, most=8) == 4
    assert next_draft_count(1, offered=1, kept=0, most=8) == 1
    assert next_draft_count(2, offered=2, kept=2, most=8) == 4
    assert next_draft_count(8, offered=8, kept=8, most=8) == 8
    assert next_draft_count(4, offered=4, kept=2, most=8) == 4
    assert next_draft_count(4, offered=0, kept=0, most=8) == 4, "a pass without guesses says nothing"


def test_prompt_lookup_drafts_from_the_checkpoints_table_and_writes_generates_text(fast_checkpoint, tiny_processor):
    """fp32 weights: the guesses change no token; every row and text prompt asks the caption table."""
    model = MODAForConditionalGeneration.from_pretrained(fast_checkpoint)
    asked = []
    model.caption_drafter = count_draft_calls(load_caption_drafter(fast_checkpoint), asked)  # optimize_for_cpu's
    for seed, prompt in ((0, ""), (1, "A navy blue men's"), (2, "A red")):
        inputs = tiny_processor(images=make_photo(seed), text=prompt)
        reference = generate(model, inputs, max_new_tokens=LONG_TOKENS)
        asked.clear()
        assert torch.equal(generate(model, inputs, max_new_tokens=LONG_TOKENS, prompt_lookup_num_tokens=8), reference)
        assert asked and asked[0] == 8, "the table is asked for prompt_lookup_num_tokens guesses"


def test_right_guesses_save_passes_and_wrong_ones_halve_the_count(no_eos_model, tiny_processor, photos8):
    inputs = tiny_processor(images=photos8[:1])
    reference = generate(no_eos_model, inputs, max_new_tokens=LONG_TOKENS)
    model = copy.deepcopy(no_eos_model)
    vocab_size = model.config.text_config.vocab_size
    passes = {}
    for name, drafter in (("right", Oracle(reference)), ("wrong", Oracle(reference, right=0, vocab_size=vocab_size))):
        asked = []
        model.caption_drafter = count_draft_calls(drafter, asked)
        with counting_passes(model) as counted:
            assert torch.equal(
                generate(model, inputs, max_new_tokens=LONG_TOKENS, prompt_lookup_num_tokens=8), reference
            ), name
        passes[name] = counted[0]
        if name == "wrong":
            assert asked[:5] == [8, 4, 2, 1, 1]
    # right: every pass keeps its 8 guesses and adds a token, the prompt's pass included (the last pass fewer)
    assert passes == {"right": -(-LONG_TOKENS // 9), "wrong": LONG_TOKENS}


def test_eos_among_the_guesses_ends_the_text_like_generate(tiny_model, tiny_processor, photos8):
    model = copy.deepcopy(tiny_model)
    model.generation_config.eos_token_id = None
    inputs = tiny_processor(images=photos8[:1])
    free_running = generate(model, inputs, max_new_tokens=NEW_TOKENS)
    text = free_running[0, 2:].tolist()
    eos = next(token for index, token in enumerate(text) if 2 <= index <= 4 and token not in text[:index])
    model.generation_config.eos_token_id = eos
    model.caption_drafter = Oracle(free_running)  # guesses past EOS: the text if the model had not stopped
    reference = generate(model, inputs, max_new_tokens=NEW_TOKENS)
    with counting_passes(model) as passes:
        drafted = generate(model, inputs, max_new_tokens=NEW_TOKENS, prompt_lookup_num_tokens=8)
    assert torch.equal(drafted, reference) and drafted[0, -1] == eos
    assert passes == [1], "the prompt's pass keeps the guesses up to EOS"


def test_without_a_table_prompt_lookup_and_assistants_stay_transformers_own(
    tiny_model, tiny_processor, photos8, monkeypatch
):
    served = []  # the class of every candidate generator generate asked
    for generator in (PromptLookupCandidateGenerator, AssistedCandidateGenerator, CaptionDraftCandidateGenerator):
        get_candidates = generator.get_candidates
        monkeypatch.setattr(generator, "get_candidates", lambda self, *args, _get=get_candidates, **kwargs: (
            served.append(type(self)) or _get(self, *args, **kwargs)
        ))
    model = copy.deepcopy(tiny_model)
    inputs = tiny_processor(images=photos8[:1])
    reference = generate(model, inputs, max_new_tokens=4)
    table = CaptionDrafter({(1,): 2}, 1)
    for drafter, settings, expected in (
        (None, {"prompt_lookup_num_tokens": 4}, PromptLookupCandidateGenerator),
        (table, {"prompt_lookup_num_tokens": 4}, CaptionDraftCandidateGenerator),
        (table, {"assistant_model": tiny_model}, AssistedCandidateGenerator),
    ):
        model.caption_drafter = drafter
        served.clear()
        assert torch.equal(generate(model, inputs, max_new_tokens=4, **settings), reference)
        assert served and set(served) == {expected}, settings


def test_prompt_lookup_takes_one_image_at_a_time(tiny_model, tiny_processor, photos8):
    """transformers' assisted generation runs batch 1 only (docs/performance.md); its error is kept."""
    model = copy.deepcopy(tiny_model)
    model.caption_drafter = CaptionDrafter({(1,): 2}, 1)
    with pytest.raises(ValueError, match="batch_size = 1"):
        generate(model, tiny_processor(images=photos8[:2]), max_new_tokens=4, prompt_lookup_num_tokens=8)


def test_the_pipeline_drafts_through_generate_kwargs(fast_checkpoint):
    """The CPU fast path (int8, caption vocabulary, drafts) served by the image-text-to-text pipeline."""
    model = MODAForConditionalGeneration.from_pretrained(fast_checkpoint).optimize_for_cpu("int8")
    processor = MODAProcessor.from_pretrained(fast_checkpoint)
    asked = []
    count_draft_calls(model.caption_drafter, asked)
    describe = pipeline("image-text-to-text", model=model, processor=processor)
    photo = make_photo(0)
    piped = describe(images=photo, text="", generate_kwargs={"prompt_lookup_num_tokens": 8})[0]["generated_text"]
    assert asked, "the pipeline's generate asked the caption table"
    [expected] = processor.batch_decode(
        generate(model, processor(images=photo), prompt_lookup_num_tokens=8), skip_special_tokens=True
    )
    assert piped.strip() == expected.strip()
