"""Labels of category values, one value at a time: what a group or cell is called in results.

Integral numbers are written without ``.0`` (so the number 1, the float 1.0 and the text "1" are
one group, whichever type a site's file gave the column), other floats by their ``repr``, text as
it is. Vectorised labelling of a site's column lives in ``crosstab.category_labels``; this scalar
form labels pooled values for the centralized twins and the survival groups.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["value_label"]


def value_label(value: Any) -> str:
    """Return the label of one category value (see the module docstring)."""
    if isinstance(value, str):
        return value
    number = float(value)
    if math.isfinite(number) and number.is_integer() and abs(number) < 2.0**53:
        return str(int(number))
    return repr(number)
