"""The task `cost.py` replays: a goal, two designs, four versions of the code, four reviews.

Issue 21's scenario: a design of about 1,500 tokens, code of about 3,000 (``_cost_files``),
and a review that sends the work back to the coder twice and to the architect once
before it approves: 10 model calls over 4 rounds.

- architect: ``DESIGNS`` (``_cost_design``): the first, then after the third review
  the same design with ``total_seconds`` refusing years and months and a new ``add_to``.
- coder: the first version whole (``FILES_V1``, one failing test); each later round is
  one of ``EDITS`` (a few search/replace blocks, their search text copied from the code
  as it is then), answered as edits when the request asks for ``CodeEdits`` and as every
  file whole (the edits applied) when it asks for ``Code``.
- reviewer: ``VERDICTS`` in order: revise_code (the failing test and two gaps),
  revise_code (negative components, the zero duration's round trip), revise_design
  (a month is not 30 days), approve.
"""

from __future__ import annotations

from _cost_design import CONSTRAINTS, DESIGNS, GOAL
from _cost_files import FILES_V1

from swarmbus.protocols import (
    Code,
    CodeEdits,
    Edit,
    Finding,
    SourceFile,
    Verdict,
    apply_edits,
)

__all__ = ["CONSTRAINTS", "DESIGNS", "EDITS", "GOAL", "VERDICTS", "code_versions"]


def _edit(path: str, search: str, replace: str) -> Edit:
    return Edit(path=path, search=search, replace=replace)


_ROUND_2 = CodeEdits(notes=(
    "Accept a comma as the decimal sign; reject a duration without components; singular "
    "unit names for 1; tests for each."), edits=[
    _edit("parsing.py", r'''_NUMBER = r"(\d+(?:\.\d+)?)"
''', r'''_NUMBER = r"(\d+(?:[.,]\d+)?)"  # ISO 8601 allows a comma as the decimal sign
'''),
    _edit("parsing.py", r'''    if text.endswith("T"):
        raise DurationParseError(text, "a 'T' must be followed by a time component")
    values: dict[str, float] = {}
    for name, raw in zip(_NAMES, match.groups(), strict=True):
        if raw is None:
            continue
        if "." in raw and name != "seconds":
''', r'''    if text.endswith("T"):
        raise DurationParseError(text, "a 'T' must be followed by a time component")
    if all(raw is None for raw in match.groups()):
        raise DurationParseError(text, "it has no component (write PT0S for zero)")
    values: dict[str, float] = {}
    for name, raw in zip(_NAMES, match.groups(), strict=True):
        if raw is None:
            continue
        raw = raw.replace(",", ".")
        if "." in raw and name != "seconds":
'''),
    _edit("formatting.py", r'''    for name, value in duration.components().items():
        words.append(f"{_number(value)} {name}")
''', r'''    for name, value in duration.components().items():
        unit = name[:-1] if value == 1 else name  # "1 day", "2 days"
        words.append(f"{_number(value)} {unit}")
'''),
    _edit("test_parsing.py", r'''def test_rejects_non_strings():
    with pytest.raises(TypeError):
        parse_duration(5)
''', r'''def test_rejects_non_strings():
    with pytest.raises(TypeError):
        parse_duration(5)


@pytest.mark.parametrize("text", ["P", "PT"])
def test_rejects_a_duration_without_components(text):
    with pytest.raises(DurationParseError, match="component"):
        parse_duration(text)


def test_comma_fraction_only_on_seconds():
    with pytest.raises(DurationParseError, match="fraction"):
        parse_duration("P1,5D")
'''),
    _edit("test_formatting.py", r'''def test_humanize_zero():
    assert humanize(Duration()) == "0 seconds"
''', r'''def test_humanize_zero():
    assert humanize(Duration()) == "0 seconds"


def test_humanize_singular():
    assert humanize(Duration(days=1, hours=1)) == "1 day, 1 hour"
    assert humanize(Duration(minutes=1, seconds=2), max_units=2) == "1 minute, 2 seconds"
'''),
])

_ROUND_3 = CodeEdits(notes=(
    "Duration validates its components (non-negative, fractions only on seconds), so a "
    "subtraction below zero raises; the zero duration is written PT0S and round-trips."),
    edits=[
    _edit("duration.py", r'''    seconds: float = 0.0

    def components(self) -> dict[str, float]:
''', r'''    seconds: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0:
                raise ValueError(f"{f.name} must not be negative, got {value}")
            if f.name != "seconds" and value != int(value):
                raise ValueError(f"only seconds may have a fraction, got {f.name}={value}")

    def components(self) -> dict[str, float]:
'''),
    _edit("duration.py", r'''    def __sub__(self, other: object) -> Duration:
        if not isinstance(other, Duration):
''', r'''    def __sub__(self, other: object) -> Duration:
        """Component-wise; raises ValueError when a component would become negative."""
        if not isinstance(other, Duration):
'''),
    _edit("formatting.py", r'''    return "P" + date + (f"T{time}" if time else "")
''', r'''    if not date and not time:
        return "PT0S"  # "P" alone is not a duration
    return "P" + date + (f"T{time}" if time else "")
'''),
    _edit("test_duration.py", r'''def test_sub_is_componentwise():
    assert Duration(hours=3, minutes=10) - Duration(hours=1) == Duration(hours=2, minutes=10)
''', r'''def test_sub_is_componentwise():
    assert Duration(hours=3, minutes=10) - Duration(hours=1) == Duration(hours=2, minutes=10)


def test_sub_below_zero_raises():
    with pytest.raises(ValueError, match="negative"):
        Duration(hours=1) - Duration(hours=2)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"days": -1}, "days must not be negative"),
        ({"seconds": -0.5}, "seconds must not be negative"),
        ({"days": 1.5}, "only seconds may have a fraction"),
        ({"months": 0.25}, "only seconds may have a fraction"),
    ],
)
def test_components_are_validated(fields, message):
    with pytest.raises(ValueError, match=message):
        Duration(**fields)
'''),
    _edit("test_formatting.py", '@pytest.mark.parametrize("text", ["P1Y2M10DT2H30M", "PT2H", '
          '"P3W", "P1DT0.5S", "PT0.001S"])\n', r'''@pytest.mark.parametrize(
    "text", ["P1Y2M10DT2H30M", "PT2H", "P3W", "P1DT0.5S", "PT0.001S", "PT0S"]
)
'''),
])

_ROUND_4 = CodeEdits(notes=(
    "As the revised design says: total_seconds refuses years and months; add_to applies "
    "them on the calendar (clamped to the month's end), then the exact part."), edits=[
    _edit("duration.py", r'''from dataclasses import dataclass, fields
''', r'''import calendar
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
'''),
    _edit("duration.py", r'''SECONDS_PER_UNIT = {
    "years": 365 * 86400,
    "months": 30 * 86400,
    "weeks": 7 * 86400,
''', r'''# Years and months have no fixed length: only the exact units convert to seconds.
SECONDS_PER_UNIT = {
    "weeks": 7 * 86400,
'''),
    _edit("duration.py", r'''    def total_seconds(self) -> float:
        """The length in seconds, a month counted as 30 days and a year as 365."""
        return sum(getattr(self, name) * factor for name, factor in SECONDS_PER_UNIT.items())
''', r'''    def total_seconds(self) -> float:
        """The length in seconds. Raises ValueError when the duration has years or
        months, whose length depends on the date they start from: use ``add_to``."""
        if self.years or self.months:
            raise ValueError(f"{self} has years or months: its length in seconds depends "
                             "on the start date; use add_to(moment)")
        return sum(getattr(self, name) * factor for name, factor in SECONDS_PER_UNIT.items())

    def add_to(self, moment: datetime) -> datetime:
        """``moment`` moved forward by this duration: years and months on the calendar
        (the day clamped to the month's last, so Jan 31 + P1M is Feb 28 or 29), then
        weeks, days and the time components as exact lengths."""
        month_index = moment.month - 1 + self.months + 12 * self.years
        year = moment.year + month_index // 12
        month = month_index % 12 + 1
        day = min(moment.day, calendar.monthrange(year, month)[1])
        moved = moment.replace(year=year, month=month, day=day)
        exact = timedelta(weeks=self.weeks, days=self.days, hours=self.hours,
                          minutes=self.minutes, seconds=self.seconds)
        return moved + exact
'''),
    _edit("test_duration.py", r'''import pytest

from duration import Duration
''', r'''from datetime import datetime

import pytest

from duration import Duration
'''),
    _edit("test_duration.py", r'''def test_total_seconds_counts_months_as_30_days():
    assert Duration(months=1).total_seconds() == 30 * 86400
    assert Duration(years=1).total_seconds() == 365 * 86400
''', r'''@pytest.mark.parametrize("nominal", [Duration(months=1), Duration(years=1, days=2)])
def test_total_seconds_refuses_years_and_months(nominal):
    with pytest.raises(ValueError, match="add_to"):
        nominal.total_seconds()


@pytest.mark.parametrize(
    ("start", "duration", "end"),
    [
        (datetime(2024, 1, 31), Duration(months=1), datetime(2024, 2, 29)),
        (datetime(2023, 1, 31), Duration(months=1), datetime(2023, 2, 28)),
        (datetime(2024, 2, 29), Duration(years=1), datetime(2025, 2, 28)),
        (datetime(2024, 11, 15), Duration(months=3), datetime(2025, 2, 15)),
        (datetime(2024, 3, 30, 22), Duration(days=1, hours=3), datetime(2024, 4, 1, 1)),
        (datetime(2024, 1, 1), Duration(years=1, months=2, weeks=1, seconds=1.5),
         datetime(2025, 3, 8, 0, 0, 1, 500000)),
    ],
)
def test_add_to_uses_the_calendar_for_years_and_months(start, duration, end):
    assert duration.add_to(start) == end
'''),
])

EDITS = [_ROUND_2, _ROUND_3, _ROUND_4]
"""The coder's revisions in rounds 2, 3 and 4, each against the code as the round before
left it."""


def code_versions() -> list[Code]:
    """The code after each of the coder's four rounds (the edits applied in turn).
    Raises ``EditsNotApplied`` if an edit's search text is not in the code it revises."""
    code = Code(files=[SourceFile(path=p, content=c) for p, c in FILES_V1.items()],
                notes="Three modules and their tests, as the design lists them.")
    out = [code]
    for change in EDITS:
        code = apply_edits(code, change)
        out.append(code)
    return out


def _finding(severity: str, location: str, target: str, explanation: str) -> Finding:
    return Finding.model_validate({"severity": severity, "location": location,
                                   "target": target, "explanation": explanation})


VERDICTS = [
    Verdict(decision="revise_code", summary=(
        "One test fails: a comma as the decimal sign is rejected, though the design accepts "
        "it. Two smaller gaps against the design."), findings=[
        _finding("critical", "parsing.py:21 (_NUMBER)", "coder",
                 "The number pattern only allows a full stop before a fraction, so PT1,5S is "
                 "rejected and test_comma_is_a_decimal_sign_too fails. Criterion 4 allows a "
                 "comma: accept [.,] and turn the comma into a full stop before float()."),
        _finding("major", "parsing.py:45 (parse_duration)", "coder",
                 "A bare 'P' matches the pattern (every group is optional) and parses as a "
                 "zero duration. ISO 8601 requires at least one component: reject it with a "
                 "reason that says to write PT0S, and test it."),
        _finding("minor", "formatting.py:43 (humanize)", "coder",
                 "A component of exactly 1 is written in the plural ('1 days, 1 hours'). Use "
                 "the singular for 1 and add a test."),
    ]),
    Verdict(decision="revise_code", summary=(
        "Every test passes now. Two problems remain against the design: negative components "
        "are accepted, and the zero duration no longer round-trips."), findings=[
        _finding("major", "duration.py:21 (Duration)", "coder",
                 "The design says the components are non-negative and only seconds may have "
                 "a fraction, but Duration(days=-1) and Duration(days=1.5) are accepted and "
                 "Duration(hours=1) - Duration(hours=2) gives hours=-1. Validate in "
                 "__post_init__ (ValueError naming the component) and test each case."),
        _finding("minor", "formatting.py:28 (format_duration)", "coder",
                 "format_duration(Duration()) returns 'P', which parse_duration now rejects, so "
                 "the zero duration no longer round-trips (criterion 10). Write PT0S for zero "
                 "and add it to test_round_trip."),
    ]),
    Verdict(decision="revise_design", summary=(
        "The code matches the design, but the design's total_seconds is wrong for the goal: "
        "months and years have no fixed length."), findings=[
        _finding("major", "design: Duration.total_seconds", "architect",
                 "The goal asks for calendar-correct months and years, but the interface "
                 "counts a month as 30 days and a year as 365, so P1M is 2,592,000 seconds "
                 "from January 31 and from February 1 alike. Make total_seconds refuse years "
                 "and months (ValueError) and add an operation that applies a duration to a "
                 "datetime on the calendar."),
        _finding("minor", "design: acceptance criteria", "architect",
                 "Criterion 13 asserts the 30-day month and the 365-day year; replace it, and "
                 "add criteria for the calendar case: the end of a month and a leap year."),
    ]),
    Verdict(decision="approve", summary=(
        "The code implements the revised design and its tests pass; the earlier findings "
        "are all addressed."), findings=[
        _finding("info", "duration.py (add_to)", "coder",
                 "add_to adds the exact part in wall time to an aware datetime, so across a "
                 "DST change PT24H is not always 86,400 real seconds. Fine for this goal; "
                 "worth a sentence in the docstring."),
        _finding("info", "test_formatting.py", "coder",
                 "humanize is not tested with fractional seconds; the criteria do not ask "
                 "for it."),
    ]),
]
"""The reviewer's answers, in order."""
