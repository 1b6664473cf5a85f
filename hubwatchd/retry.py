"""When to try a failed upload again, and when to stop trying.

Exponential backoff with full jitter: the n-th retry waits a uniformly random
time between 0 and min(max_delay, initial_delay * 2**(n-1)), so many watches
that failed together (the hub restarted) do not come back together.

A hub's `Retry-After` wins when it asks for more than the jittered delay. It
is honoured beyond `max_delay` (the hub knows its own maintenance window
better than our cap does) but never beyond `give_up_after`: a hub asking for
a week cannot hold a version past the age at which it is failed anyway.

Pure: no clock and no global random state; the caller passes both in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hubwatchd.config import RetryConfig

# 2**60 times any sane initial delay is far past every cap; a larger exponent
# would only risk an OverflowError converting to float.
_MAX_EXPONENT = 60


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff settings, in seconds. Frozen: build one per config load."""

    initial_delay: float = 5.0
    max_delay: float = 900.0
    give_up_after: float = 86400.0

    def __post_init__(self) -> None:
        if self.initial_delay <= 0 or self.max_delay < self.initial_delay:
            message = (
                "need 0 < initial_delay <= max_delay, got "
                f"initial_delay={self.initial_delay}, max_delay={self.max_delay}"
            )
            raise ValueError(message)
        if self.give_up_after <= 0:
            raise ValueError(f"give_up_after must be > 0, got {self.give_up_after}")

    @classmethod
    def from_config(cls, config: RetryConfig) -> RetryPolicy:
        return cls(config.initial_delay, config.max_delay, config.give_up_after)

    def ceiling(self, attempt: int) -> float:
        """The largest jittered delay before retry number `attempt` (1-based)."""
        exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
        return min(self.max_delay, self.initial_delay * 2**exponent)

    def delay(
        self,
        attempt: int,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds to wait before retry number `attempt` (1 after the first failure).

        `retry_after` is the hub's Retry-After in seconds, if it sent one.
        `rng` supplies the jitter; tests inject a seeded or stubbed one.
        """
        rng = rng or random.Random()
        jittered = rng.uniform(0.0, self.ceiling(attempt))
        if retry_after is not None and retry_after > jittered:
            return min(retry_after, self.give_up_after)
        return jittered

    def gave_up(self, first_failure_at: float, now: float) -> bool:
        """True once a version has been failing for `give_up_after` or longer."""
        return now - first_failure_at >= self.give_up_after
