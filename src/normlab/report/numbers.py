"""Numbers as people read them in the report's labels: 3 significant digits, scientific
where that is shorter (1e-3, 3e-4), so an Optuna sweep's `optimizer.lr=0.0031622776601683794`
reads `optimizer.lr=0.00316`. summary.csv keeps the raw values."""

from __future__ import annotations

import math
from collections.abc import Iterable


def format_number(value: float | int | str, digits: int = 3) -> str:
    """`value` with `digits` significant digits, in the shorter of decimal and scientific
    notation (decimal on a tie): 0.0031622776601683794 -> 0.00316, 0.001 -> 1e-3,
    0.0003 -> 3e-4, 12345.678 -> 1.23e4. Whole numbers below 10,000 stay whole (batch size
    128, lr 1000); text that is not a finite number comes back unchanged."""
    number = as_number(value)
    if number is None:
        return str(value)
    if number == int(number) and abs(number) < 10_000:
        return str(int(number))
    decimal = f"{number:.{digits}g}"
    if "e" in decimal:  # Python's own switch to scientific: 1e-05 -> 1e-5
        decimal = _compact_exponent(decimal)
    scientific = _compact_exponent(f"{number:.{digits - 1}e}")
    return scientific if len(scientific) < len(decimal) else decimal


def _compact_exponent(text: str) -> str:
    """3.16e-03 -> 3.16e-3, 1.00e+04 -> 1e4: no zero padding, no trailing zeros, no `+`."""
    mantissa, _, exponent = text.partition("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def as_number(value: float | int | str) -> float | None:
    """`value` as a finite float (a swept value such as "0.01" or "1e-3"); None for text,
    booleans, NaN and infinities."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def short_forms(values: Iterable[str], digits: int = 3) -> dict[str, str]:
    """{raw value: label} for the values of one swept key: `format_number` with as many
    digits as it takes (from `digits` up) for different numbers to keep different labels."""
    values = list(dict.fromkeys(values))
    numbers = {v: n for v in values if (n := as_number(v)) is not None}
    for precision in range(digits, 18):
        shown = {v: format_number(v, precision) for v in numbers}
        distinct = {numbers[v]: s for v, s in shown.items()}
        if len(set(distinct.values())) == len(distinct):
            break
    return {v: shown.get(v, v) for v in values}
