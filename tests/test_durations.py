import pytest

from asgimesh._durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1.5", 1.5),
        (3, 3.0),
        ("0", 0.0),
        (" 10s ", 10.0),
        (".5s", 0.5),
    ],
)
def test_parses(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad", ["fast", "-1s", "10 seconds", "", "1d", True, None, [1], float("inf")]
)
def test_refuses_with_what_was_expected(bad: object) -> None:
    with pytest.raises(ValueError, match=r"expected a duration .*got"):
        parse_duration(bad)
