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
        ('{"caption": "A red shirt"}', "missing 'description' key"),
        ('{"description": ["red"]}', "description is not a string"),
        ('{"description": "  "}', "empty description"),
        ("[1] {} [2]", "missing 'description' key"),
    ],
)
def test_bad_answers_fail_with_a_reason(answer, reason):
    with pytest.raises(AnswerError) as error:
        parse_description(answer)
    assert str(error.value) == reason
    assert isinstance(error.value, ValueError)
