"""The goal of the task `cost.py` replays, and the architect's two designs.

``DESIGN_V1`` (about 1,400 tokens as the prompts show it) and, after the review sent
the design back (a month is not 30 days), ``DESIGN_V2``: the same design with
``total_seconds`` refusing years and months, a new ``add_to`` and three criteria
changed.
"""

from __future__ import annotations

from swarmbus.protocols import Component, Design

__all__ = ["CONSTRAINTS", "DESIGNS", "GOAL"]

GOAL = (
    "Write a small Python library for ISO 8601 durations: parse strings such as "
    "P1Y2M10DT2H30M and PT1.5S into a Duration value, write them back in canonical form "
    "and in words, add, subtract and scale durations, convert exact durations to seconds, "
    "and apply a duration to a datetime with calendar-correct months and years. Include "
    "pytest tests for every behaviour."
)
CONSTRAINTS = [
    "Python 3.11, standard library only (no dateutil, no isodate)",
    "flat layout: modules and test files side by side, no package",
    "errors raise ValueError subclasses whose message says what is wrong",
]

_INTERFACES_V1 = [
    "class Duration(years: int = 0, months: int = 0, weeks: int = 0, days: int = 0, "
    "hours: int = 0, minutes: int = 0, seconds: float = 0.0): a frozen, hashable dataclass "
    "compared by its components; all components non-negative, only seconds may have a "
    "fraction",
    "Duration.components(self) -> dict[str, float]: the non-zero components by name, "
    "largest unit first",
    "Duration.is_zero(self) -> bool: every component is zero",
    "SECONDS_PER_UNIT: dict[str, int]: the seconds in one of each unit total_seconds "
    "converts, largest unit first",
    "Duration.__add__(self, other: Duration) -> Duration and Duration.__sub__(self, other: "
    "Duration) -> Duration: component-wise, without normalizing; NotImplemented for other "
    "types (so TypeError)",
    "Duration.scaled(self, factor: int) -> Duration: every component times factor; raises "
    "ValueError for factor < 0",
    "Duration.total_seconds(self) -> float: weeks as 7 days, days as 86,400 s, a month as 30 "
    "days and a year as 365 days",
    "Duration.normalized(self) -> Duration: carries 60 s into a minute, 60 min into an hour, "
    "24 h into a day; years, months, weeks and days are left as they are",
    "parse_duration(text: str) -> Duration: the PnYnMnWnDTnHnMnS form; raises "
    "DurationParseError for text that is not an ISO 8601 duration and TypeError for a "
    "value that is not a string",
    "class DurationParseError(ValueError): attributes text: str and reason: str; str(e) "
    "names both",
    "format_duration(duration: Duration) -> str: the canonical text, the inverse of "
    "parse_duration",
    "humanize(duration: Duration, *, max_units: int = 2) -> str: e.g. '2 days, 3 hours'; "
    "'0 seconds' for zero; raises ValueError for max_units < 1",
]
_CRITERIA_V1 = [
    "parse_duration('P1Y2M10DT2H30M') == Duration(years=1, months=2, days=10, hours=2, "
    "minutes=30)",
    "Each designator parses alone: P1Y, P2M, P3W, P10D, PT2H, PT30M, PT45S; PT0S is the "
    "zero duration",
    "M means months before T and minutes after it: P1M is one month, PT1M one minute",
    "Seconds may have a fraction, with a full stop or a comma as the decimal sign: PT1.5S "
    "and PT1,5S both give seconds=1.5",
    "A fraction on any other component is rejected: P1.5D raises DurationParseError",
    "Malformed text raises DurationParseError whose reason says why: empty text, a missing "
    "P, lower-case designators, surrounding whitespace, components out of order (P1D2Y), "
    "a negative sign, a T without a time component (PT, P1DT), a number without a "
    "designator (PT1H30)",
    "parse_duration(5) raises TypeError",
    "format_duration leaves zero components out: Duration(hours=2) is PT2H, "
    "Duration(weeks=2) is P2W",
    "format_duration writes seconds with at most six decimals and no trailing zeros: "
    "PT1.25S, P1DT0.5S",
    "format_duration(parse_duration(t)) == t for canonical t: P1Y2M10DT2H30M, P3W, "
    "PT0.001S",
    "Addition and subtraction are component-wise and do not normalize: P1DT20H + PT5H30M "
    "== P1DT25H30M",
    "scaled(3) multiplies every component; scaled(-1) raises ValueError",
    "total_seconds: P1W1DT1H1M1.25S is 694,861.25 seconds; P1M is 2,592,000 seconds and "
    "P1Y 31,536,000",
    "normalized carries the time part: PT23H59M61.5S becomes P1DT1.5S; years, months and "
    "weeks are unchanged",
    "is_zero() is true exactly for the zero duration, whose components() is empty; "
    "components() lists the non-zero components largest unit first",
    "humanize names at most max_units units, largest first: '2 days, 3 hours' by default, "
    "'2 days, 3 hours, 4 minutes' with max_units=3",
]

DESIGN_V1 = Design(
    summary=(
        "A small standard-library package for ISO 8601 durations. A frozen Duration value "
        "keeps each component as written (years, months, weeks, days, hours, minutes, "
        "seconds), so P1D and PT24H stay different values. parse_duration reads the "
        "PnYnMnWnDTnHnMnS form with one anchored regular expression and strict errors that "
        "say what is wrong; format_duration writes the canonical text back and humanize "
        "writes it in words. Arithmetic is component-wise; total_seconds converts a "
        "duration to seconds and normalized carries the time part into larger units. "
        "Every error is a ValueError subclass whose message names the offending text or "
        "component. Not in scope: negative durations, the alternative form "
        "PYYYY-MM-DDThh:mm:ss, intervals with start and end dates, and time zones."
    ),
    components=[
        Component(name="duration", responsibility=(
            "duration.py: the Duration value, a frozen dataclass of seven non-negative "
            "components with component-wise addition, subtraction and scaling, conversion "
            "to seconds, and normalization of the time part. It imports nothing from the "
            "other modules.")),
        Component(name="parsing", responsibility=(
            "parsing.py: parse_duration and DurationParseError. One anchored regular "
            "expression for the designators in their fixed order, then the checks a "
            "regular expression cannot express (a trailing T, fractions only on seconds); "
            "every error names the text and the reason.")),
        Component(name="formatting", responsibility=(
            "formatting.py: format_duration and humanize. The canonical ISO text (zero "
            "components left out, seconds with at most six decimals, trailing zeros "
            "removed) and a short English rendering naming the largest units first.")),
        Component(name="tests", responsibility=(
            "test_duration.py, test_parsing.py, test_formatting.py: at least one test per "
            "acceptance criterion, parametrized over representative inputs, including every "
            "rejection the criteria list and the round trip of parse and format.")),
    ],
    interfaces=_INTERFACES_V1,
    files=["duration.py", "parsing.py", "formatting.py", "test_duration.py",
           "test_parsing.py", "test_formatting.py"],
    acceptance_criteria=_CRITERIA_V1,
)

DESIGN_V2 = DESIGN_V1.model_copy(update={
    "summary": DESIGN_V1.summary + (
        " Revised after review: years and months have no fixed length, so total_seconds "
        "refuses them and the new add_to applies a duration to a datetime on the calendar."),
    "interfaces": [
        *_INTERFACES_V1[:6],
        "Duration.total_seconds(self) -> float: weeks as 7 days, days as 86,400 s; raises "
        "ValueError when years or months are not zero (their length depends on the start "
        "date: use add_to)",
        "Duration.add_to(self, moment: datetime) -> datetime: years and months on the "
        "calendar, the day clamped to the month's last (2024-01-31 + P1M is 2024-02-29), "
        "then weeks, days and the time part as exact lengths",
        *_INTERFACES_V1[7:],
    ],
    "acceptance_criteria": [
        *_CRITERIA_V1[:12],
        "total_seconds: P1W1DT1H1M1.25S is 694,861.25 seconds; P1M and P1Y raise ValueError "
        "naming add_to",
        *_CRITERIA_V1[13:],
        "add_to clamps to the end of the month: 2024-01-31 + P1M is 2024-02-29, 2023-01-31 "
        "+ P1M is 2023-02-28, 2024-02-29 + P1Y is 2025-02-28",
        "add_to applies the calendar part first, then the exact part: 2024-01-01 + "
        "P1Y2M1WT1.5S is 2025-03-08 00:00:01.5",
    ],
})

DESIGNS = [DESIGN_V1, DESIGN_V2]
"""The architect's answers, in order."""
