"""Trace-time argument checks shared by ``jaxalign.ops`` and ``jaxalign.losses``.

Everything here looks only at static information (shapes, dtypes, Python
scalars, concrete arrays), so it works inside ``jax.jit``: a traced numeric
argument is simply not checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import numpy as np


def concrete_float(value: Any) -> float | None:
    """``float(value)`` if it is known at trace time, else ``None``."""
    if value is None:
        return None
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - anything not convertible is "not concrete"
        return None
    if arr.size != 1:
        return None
    return float(arr.reshape(()))


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; expected one of {', '.join(map(repr, choices))}")


def check_scalar(
    name: str,
    value: Any,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    upper: float | None = None,
    upper_inclusive: bool = True,
    lower: float | None = None,
    lower_inclusive: bool = True,
) -> None:
    """Range-check a numeric hyper-parameter when its value is concrete."""
    v = concrete_float(value)
    if v is None:
        return
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if nonnegative and not v >= 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    if lower is not None and (v < lower or (not lower_inclusive and v == lower)):
        op = ">=" if lower_inclusive else ">"
        raise ValueError(f"{name} must be {op} {lower}, got {v}")
    if upper is not None and (v > upper or (not upper_inclusive and v == upper)):
        op = "<=" if upper_inclusive else "<"
        raise ValueError(f"{name} must be {op} {upper}, got {v}")


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_same_shape(reference_name: str, reference: Any, **others: Any) -> None:
    """Raise ``ValueError`` naming the first of ``others`` whose shape differs from ``reference``'s."""
    ref_shape = tuple(np.shape(reference))
    for name, arr in others.items():
        if arr is None:
            continue
        shape = tuple(np.shape(arr))
        if shape != ref_shape:
            raise ValueError(f"{name} has shape {shape} but {reference_name} has shape {ref_shape}: they must match")
