"""JSON as the standard defines it, for every file and line superclip writes: no ``NaN`` or ``Infinity``.

Python's ``json.dumps`` writes a non-finite float as the bare word ``NaN`` / ``Infinity``, which no strict reader
takes (``jq``, JavaScript's ``JSON.parse``, Go, ``json.loads(..., parse_constant=...)``). Here such a value is
written as ``null``, and the object that holds it says why under ``null_reasons`` (key -> reason; a list item is
named ``key[i]``), next to any reason the code that made the value gave there itself.
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict

REASONS = "null_reasons"


def _reason(value: float) -> str:
    return "not a number (NaN)" if math.isnan(value) else f"{'-' if value < 0 else ''}infinite"


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None and its reason recorded (see the module docstring);
    dicts and lists are copied, everything else is returned as it is."""
    if isinstance(obj, dict):
        out: Dict[Any, Any] = {}
        reasons: Dict[str, str] = dict(obj.get(REASONS) or {})
        for key, value in obj.items():
            if key == REASONS:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
                reasons.setdefault(str(key), _reason(value))
            elif isinstance(value, (list, tuple)):
                items = []
                for i, v in enumerate(value):
                    if isinstance(v, float) and not math.isfinite(v):
                        reasons.setdefault(f"{key}[{i}]", _reason(v))
                        v = None
                    items.append(strict(v))
                out[key] = items
            else:
                out[key] = strict(value)
        if reasons:
            out[REASONS] = reasons
        return out
    if isinstance(obj, (list, tuple)):
        return [None if isinstance(v, float) and not math.isfinite(v) else strict(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """``json.dumps`` of :func:`strict` ``(obj)``; never writes NaN or Infinity (``allow_nan=False``)."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)
