"""The reconnect delay policy: exponential, capped, with jitter."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between reconnect attempts.

    The first retry comes after ``initial`` seconds, each next one ``multiplier`` times later,
    capped at ``maximum``; every delay is spread by ``±jitter`` (a fraction) so that a fleet of
    processes that lost the same database does not knock on it in lock step.

    ``Backoff.none()`` sleeps zero: for tests and for callers who pace themselves.
    """

    initial: float = 0.05
    multiplier: float = 2.0
    maximum: float = 1.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        for name in ("initial", "maximum"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigurationError(
                    f"Backoff.{name} must be a finite number >= 0, not {value!r}"
                )
        if not isinstance(self.multiplier, int | float) or not self.multiplier >= 1:
            raise ConfigurationError(f"Backoff.multiplier must be >= 1, not {self.multiplier!r}")
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter < 1:
            raise ConfigurationError(f"Backoff.jitter must be in [0, 1), not {self.jitter!r}")
        if self.maximum < self.initial:
            raise ConfigurationError(
                f"Backoff.maximum ({self.maximum}) must be >= Backoff.initial ({self.initial})"
            )

    @classmethod
    def none(cls) -> Backoff:
        """A policy that never sleeps (test mode)."""
        return cls(initial=0.0, maximum=0.0, jitter=0.0)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
        if attempt < 1 or self.maximum == 0:
            return 0.0
        # min() before the power would overflow: exponent capped well past any useful value.
        base = min(self.initial * self.multiplier ** min(attempt - 1, 64), self.maximum)
        if self.jitter:
            spread = (rng or random).uniform(-self.jitter, self.jitter)
            base *= 1.0 + spread
        return base
