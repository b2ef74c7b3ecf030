import random

import pytest

from moda.distill.answers import AnswerError, parse_description


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"description": "A pink women\'s blouse."}', "A pink women's blouse."),
        ('```json\n{\n  "description": "Black men\'s shoes."\n}\n```', "Black men's shoes."),
        ('Sure! Here it is: {"description": "Gold  necklace."} Hope it helps.', "Gold necklace."),
        ("{'description': 'Red girls\\' dress.'}", "Red girls' dress."),
        ('{"description": "Blue jeans.",}', "Blue jeans."),
        ('{"Description": "Grey socks."}', "Grey socks."),
        ('{"description": "A shirt with "NIKE" on it"}', 'A shirt with "NIKE" on it'),
        ('{{"description": "A doubled brace."}}', "A doubled brace."),  # a set holding a dict to literal_eval
    ],
)
def test_parses_what_teachers_write(answer, expected):
    assert parse_description(answer) == expected


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("", "empty answer"),
        ("   \n", "empty answer"),
        ("A red shirt for men.", "no JSON object"),
        ('{"description": "A red shirt', "unterminated JSON object"),
        ("{description = red}", "malformed JSON"),
        ("{[1]: 'red'}", "malformed JSON"),  # literal_eval raises TypeError (unhashable list)
        ('{"caption": "A red shirt"}', "missing 'description' key"),
        ('{"description": ["red"]}', "description is not a string"),
        ('{"description": "  "}', "empty description"),
        ("[1] {} [2]", "missing 'description' key"),
        (None, "answer is not text"),
        (5, "answer is not text"),
        ('{"description": "A red \ud800 shirt"}', "answer is not valid Unicode"),
    ],
)
def test_bad_answers_fail_with_a_reason(answer, reason):
    with pytest.raises(AnswerError) as error:
        parse_description(answer)
    assert str(error.value) == reason
    assert isinstance(error.value, ValueError)


def test_any_answer_gives_a_description_or_an_answer_error():
    """Seeded fuzz over the pieces teachers' answers are made of: nothing but AnswerError may escape."""
    pieces = ['{', '}', '[', ']', '"', ':', ',', ' ', '"description"', "'red'", '1', 'None', '\n', '{}', '[]',
              '{"description": "red"}', '9' * 5000]  # fmt: skip
    rng = random.Random(0)
    for _ in range(2000):
        answer = "".join(rng.choices(pieces, k=rng.randint(1, 6)))
        try:
            description = parse_description(answer)
        except AnswerError:
            continue
        assert isinstance(description, str) and description.strip() == description and description
