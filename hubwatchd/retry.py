"""When to try a failed upload again: exponential backoff with full jitter.

Minimal version written on the `ledger` branch with exactly the interface of
the team contract; the `client` branch owns this module and the lead
reconciles the two.
"""

from __future__ import annotations

import random


class RetryPolicy:
    """Backoff doubling from `initial_delay`, capped at `max_delay`, with full
    jitter; a version still failing `give_up_after` seconds after its first
    failure is given up."""

    def __init__(
        self, initial_delay: float, max_delay: float, give_up_after: float
    ) -> None:
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.give_up_after = give_up_after

    def delay(
        self, attempt: int, retry_after: float | None, rng: random.Random
    ) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 = first).

        A uniform draw in [0, min(max_delay, initial_delay * 2**(attempt-1))];
        the hub's Retry-After wins when it is larger.
        """
        ceiling = min(self.max_delay, self.initial_delay * 2 ** max(attempt - 1, 0))
        wait = rng.uniform(0.0, ceiling)
        if retry_after is not None and retry_after > wait:
            return retry_after
        return wait

    def gave_up(self, first_failure_at: float, now: float) -> bool:
        """True once `give_up_after` seconds have passed since the first failure."""
        return now - first_failure_at >= self.give_up_after
