"""What a hyper-parameter accepts: one rule for the MTL registry, which declares methods, and for the catalog,
which the API validates specs against, so a spec the API accepts is one the workers can build.

Pure Python on purpose: the MTL core (torch only) and the control plane (no torch) both import it.
A bool is never a number: ``True`` is refused wherever a number is expected, among numeric choices too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class HParamError(ValueError):
    """A value the rule does not allow; ``reason`` completes "name=value ..." (e.g. "is not a number")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ValueRule:
    """A type (``bool``, ``int``, ``float`` or ``str``) and either a set of choices or a range whose ends may be
    open or absent."""

    type: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None

    def allowed(self) -> str:
        """The allowed values in words, for error messages and the method listing."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.type == "bool":
            return "true or false"
        if self.low is None and self.high is None:
            return f"any {self.type}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{self.type} in {left}{low}, {high}{right}"

    def check(self, value: Any) -> Any:
        """``value`` coerced to the declared type (an int is a valid float); HParamError if not allowed."""
        if self.choices is not None:
            if not any(c == value and isinstance(c, bool) == isinstance(value, bool) for c in self.choices):
                raise HParamError("is not allowed")
            return value
        if self.type == "bool":
            if not isinstance(value, bool):
                raise HParamError("is not allowed")
            return value
        if self.type == "str":
            if not isinstance(value, str):
                raise HParamError("is not a string")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise HParamError("is not a number")
        if self.type == "int" and not float(value).is_integer():
            raise HParamError("is not an integer")
        number: int | float = int(value) if self.type == "int" else float(value)
        if isinstance(number, float) and not math.isfinite(number):
            raise HParamError("is not finite")
        too_low = self.low is not None and (number <= self.low if self.low_open else number < self.low)
        too_high = self.high is not None and (number >= self.high if self.high_open else number > self.high)
        if too_low or too_high:
            raise HParamError("is out of range")
        return number
