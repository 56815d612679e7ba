"""The code of the task `cost.py` replays, as the coder writes it in its first round.

Real, valid Python (a small ISO 8601 durations library: three modules and their pytest
tests, about 12,000 characters). One test fails in this first version
(``test_comma_is_a_decimal_sign_too``): the review's first send-back is about it.
``_cost_task.py`` holds the later rounds as edits of this code.
"""

from __future__ import annotations

__all__ = ["FILES_V1"]

DURATION = r'''"""An ISO 8601 duration: years, months, weeks, days, hours, minutes, seconds."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["SECONDS_PER_UNIT", "Duration"]

SECONDS_PER_UNIT = {
    "years": 365 * 86400,
    "months": 30 * 86400,
    "weeks": 7 * 86400,
    "days": 86400,
    "hours": 3600,
    "minutes": 60,
    "seconds": 1,
}


@dataclass(frozen=True, slots=True)
class Duration:
    """A duration as ISO 8601 writes it.

    Components are kept as given: ``P1D`` is not ``PT24H`` and ``PT90M`` stays 90
    minutes until ``normalized`` carries it. Only ``seconds`` may have a fraction.
    """

    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: float = 0.0

    def components(self) -> dict[str, float]:
        """The non-zero components by name, largest unit first."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    def is_zero(self) -> bool:
        """Whether every component is zero (``PT0S``)."""
        return not self.components()

    def __add__(self, other: object) -> Duration:
        if not isinstance(other, Duration):
            return NotImplemented
        return Duration(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                           for f in fields(self)})

    def __sub__(self, other: object) -> Duration:
        if not isinstance(other, Duration):
            return NotImplemented
        return Duration(**{f.name: getattr(self, f.name) - getattr(other, f.name)
                           for f in fields(self)})

    def scaled(self, factor: int) -> Duration:
        """Every component multiplied by ``factor``, a non-negative integer."""
        if factor < 0:
            raise ValueError(f"factor must be >= 0, got {factor}")
        return Duration(**{f.name: getattr(self, f.name) * factor for f in fields(self)})

    def total_seconds(self) -> float:
        """The length in seconds, a month counted as 30 days and a year as 365."""
        return sum(getattr(self, name) * factor for name, factor in SECONDS_PER_UNIT.items())

    def normalized(self) -> Duration:
        """Seconds carried into minutes, minutes into hours and hours into days.

        Years, months, weeks and days are left as they are: a day is not always
        24 hours on a calendar, but the carry from hours is what people expect.
        """
        total = self.hours * 3600 + self.minutes * 60 + self.seconds
        whole = int(total)
        hours, rest = divmod(whole, 3600)
        minutes, secs = divmod(rest, 60)
        extra_days, hours = divmod(hours, 24)
        return Duration(self.years, self.months, self.weeks, self.days + extra_days,
                        hours, minutes, secs + (total - whole))
'''

PARSING = r'''"""Parse ISO 8601 durations (``PnYnMnWnDTnHnMnS``) into ``Duration`` values."""

from __future__ import annotations

import re

from duration import Duration

__all__ = ["DurationParseError", "parse_duration"]


class DurationParseError(ValueError):
    """The text is not an ISO 8601 duration; ``reason`` says what is wrong with it."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"not an ISO 8601 duration: {text!r}: {reason}")
        self.text = text
        self.reason = reason


_NUMBER = r"(\d+(?:\.\d+)?)"
_PATTERN = re.compile(
    r"^P"
    rf"(?:{_NUMBER}Y)?"
    rf"(?:{_NUMBER}M)?"
    rf"(?:{_NUMBER}W)?"
    rf"(?:{_NUMBER}D)?"
    r"(?:T"
    rf"(?:{_NUMBER}H)?"
    rf"(?:{_NUMBER}M)?"
    rf"(?:{_NUMBER}S)?"
    r")?$"
)
_NAMES = ("years", "months", "weeks", "days", "hours", "minutes", "seconds")


def parse_duration(text: str) -> Duration:
    """The ``Duration`` that ``text`` writes, e.g. ``P1Y2M10DT2H30M`` or ``PT1.5S``.

    Only the seconds may have a fraction. Raises ``DurationParseError`` for anything
    else, lower-case designators and surrounding whitespace included, and
    ``TypeError`` for a value that is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_duration takes a str, got {type(text).__name__}")
    match = _PATTERN.match(text)
    if match is None:
        raise DurationParseError(text, _why(text))
    if text.endswith("T"):
        raise DurationParseError(text, "a 'T' must be followed by a time component")
    values: dict[str, float] = {}
    for name, raw in zip(_NAMES, match.groups(), strict=True):
        if raw is None:
            continue
        if "." in raw and name != "seconds":
            raise DurationParseError(text, f"only seconds may have a fraction, not {name}")
        values[name] = float(raw) if name == "seconds" else int(raw)
    return Duration(**values)


def _why(text: str) -> str:
    """Why ``text`` does not match, in words (for the error message)."""
    if not text.startswith("P"):
        return "it must start with 'P'"
    if text != text.strip():
        return "it has whitespace around it"
    if any(c.islower() for c in text):
        return "designators are upper case (P, Y, M, W, D, T, H, M, S)"
    if "-" in text:
        return "components are non-negative numbers"
    return "components must come in the order Y, M, W, D, then T and H, M, S"
'''

FORMATTING = r'''"""Write ``Duration`` values as ISO 8601 text, and in words for people."""

from __future__ import annotations

from duration import Duration

__all__ = ["format_duration", "humanize"]

_DATE = (("years", "Y"), ("months", "M"), ("weeks", "W"), ("days", "D"))
_TIME = (("hours", "H"), ("minutes", "M"), ("seconds", "S"))


def _number(value: float) -> str:
    """An integer without a fraction; a fraction without trailing zeros."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def format_duration(duration: Duration) -> str:
    """The ISO 8601 text of ``duration``: the inverse of ``parse_duration``.

    Zero components are left out, so ``Duration(hours=2)`` is ``PT2H``; seconds
    keep up to six decimal places.
    """
    date = "".join(f"{_number(getattr(duration, name))}{mark}" for name, mark in _DATE
                   if getattr(duration, name))
    time = "".join(f"{_number(getattr(duration, name))}{mark}" for name, mark in _TIME
                   if getattr(duration, name))
    return "P" + date + (f"T{time}" if time else "")


def humanize(duration: Duration, *, max_units: int = 2) -> str:
    """``duration`` in words, largest units first: ``2 days, 3 hours``.

    At most ``max_units`` units are named; smaller ones are dropped, not rounded.
    A zero duration is ``0 seconds``. Raises ``ValueError`` when ``max_units`` < 1.
    """
    if max_units < 1:
        raise ValueError(f"max_units must be at least 1, got {max_units}")
    words = []
    for name, value in duration.components().items():
        words.append(f"{_number(value)} {name}")
        if len(words) == max_units:
            break
    return ", ".join(words) or "0 seconds"
'''

TEST_DURATION = r'''"""Tests of Duration: components, arithmetic, seconds, normalization."""

import pytest

from duration import Duration


def test_defaults_are_zero():
    d = Duration()
    assert d.is_zero()
    assert d.components() == {}


def test_components_keep_order_and_skip_zeros():
    d = Duration(years=1, days=3, seconds=1.5)
    assert list(d.components()) == ["years", "days", "seconds"]
    assert d.components()["seconds"] == 1.5


def test_add_is_componentwise():
    total = Duration(days=1, hours=20) + Duration(hours=5, minutes=30)
    assert total == Duration(days=1, hours=25, minutes=30)


def test_sub_is_componentwise():
    assert Duration(hours=3, minutes=10) - Duration(hours=1) == Duration(hours=2, minutes=10)


def test_add_rejects_other_types():
    with pytest.raises(TypeError):
        Duration(days=1) + 5


def test_scaled():
    assert Duration(hours=2, seconds=0.5).scaled(3) == Duration(hours=6, seconds=1.5)
    with pytest.raises(ValueError):
        Duration(hours=1).scaled(-1)


def test_total_seconds_of_exact_units():
    d = Duration(weeks=1, days=1, hours=1, minutes=1, seconds=1.25)
    assert d.total_seconds() == 8 * 86400 + 3600 + 60 + 1.25


def test_total_seconds_counts_months_as_30_days():
    assert Duration(months=1).total_seconds() == 30 * 86400
    assert Duration(years=1).total_seconds() == 365 * 86400


def test_normalized_carries_into_larger_units():
    d = Duration(hours=23, minutes=59, seconds=61.5).normalized()
    assert d == Duration(days=1, hours=0, minutes=0, seconds=1.5)


def test_normalized_leaves_nominal_units():
    d = Duration(years=1, months=14, weeks=2).normalized()
    assert (d.years, d.months, d.weeks) == (1, 14, 2)
'''

TEST_PARSING = r'''"""Tests of parse_duration: every component, fractions, and what it rejects."""

import pytest

from duration import Duration
from parsing import DurationParseError, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P1Y", Duration(years=1)),
        ("P2M", Duration(months=2)),
        ("P3W", Duration(weeks=3)),
        ("P10D", Duration(days=10)),
        ("PT2H", Duration(hours=2)),
        ("PT30M", Duration(minutes=30)),
        ("PT45S", Duration(seconds=45)),
        ("P1Y2M10DT2H30M", Duration(years=1, months=2, days=10, hours=2, minutes=30)),
        ("P1DT12H", Duration(days=1, hours=12)),
        ("PT0S", Duration()),
    ],
)
def test_parses_each_component(text, expected):
    assert parse_duration(text) == expected


def test_month_and_minute_share_a_letter():
    assert parse_duration("P1M") == Duration(months=1)
    assert parse_duration("PT1M") == Duration(minutes=1)


def test_fractional_seconds():
    assert parse_duration("PT1.5S") == Duration(seconds=1.5)
    assert parse_duration("PT0.25S").seconds == 0.25


def test_comma_is_a_decimal_sign_too():
    assert parse_duration("PT1,5S") == Duration(seconds=1.5)


@pytest.mark.parametrize(
    "text",
    ["", "1D", "P1H", "PT", "P1D2Y", "p1d", " P1D", "P1.5D", "PT1H30", "P-1D", "P1DT"],
)
def test_rejects(text):
    with pytest.raises(DurationParseError):
        parse_duration(text)


def test_error_says_why():
    with pytest.raises(DurationParseError) as caught:
        parse_duration("P1D2Y")
    assert "order" in caught.value.reason
    assert caught.value.text == "P1D2Y"


def test_rejects_non_strings():
    with pytest.raises(TypeError):
        parse_duration(5)
'''

TEST_FORMATTING = r'''"""Tests of format_duration and humanize, and the round trip."""

import pytest

from duration import Duration
from formatting import format_duration, humanize
from parsing import parse_duration


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (Duration(years=1, months=2, days=10, hours=2, minutes=30), "P1Y2M10DT2H30M"),
        (Duration(hours=2), "PT2H"),
        (Duration(weeks=2), "P2W"),
        (Duration(days=1, seconds=0.5), "P1DT0.5S"),
        (Duration(seconds=1.25), "PT1.25S"),
    ],
)
def test_format(duration, text):
    assert format_duration(duration) == text


@pytest.mark.parametrize("text", ["P1Y2M10DT2H30M", "PT2H", "P3W", "P1DT0.5S", "PT0.001S"])
def test_round_trip(text):
    assert format_duration(parse_duration(text)) == text


def test_humanize_names_the_largest_units():
    assert humanize(Duration(days=2, hours=3, minutes=4)) == "2 days, 3 hours"


def test_humanize_max_units():
    d = Duration(days=2, hours=3, minutes=4)
    assert humanize(d, max_units=3) == "2 days, 3 hours, 4 minutes"
    assert humanize(d, max_units=1) == "2 days"
    with pytest.raises(ValueError):
        humanize(d, max_units=0)


def test_humanize_zero():
    assert humanize(Duration()) == "0 seconds"
'''

FILES_V1: dict[str, str] = {
    "duration.py": DURATION,
    "parsing.py": PARSING,
    "formatting.py": FORMATTING,
    "test_duration.py": TEST_DURATION,
    "test_parsing.py": TEST_PARSING,
    "test_formatting.py": TEST_FORMATTING,
}
"""Path -> content of every file of the first version, in the order the coder sends them."""
