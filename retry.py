"""The worker's retry decision, as a pure function: back off until when, or give up.

A transient failure (Trello or the network slow, down or rate-limiting) backs the whole issue off
for a wait that doubles with each attempt, capped, with jitter, until ``give_up_after`` seconds
have passed since the first failure; a permanent one (Trello refused the request) is a dead
letter at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Backoff:
    """Try again at ``at`` (seconds since the epoch), ``wait`` seconds from now."""

    at: float
    wait: float


@dataclass(frozen=True)
class GiveUp:
    """Stop trying: the deliveries become dead letters with ``reason``."""

    reason: str


def decide(
    *,
    reason: str,
    transient: bool,
    attempts: int,
    first_failure_at: float | None,
    now: float,
    policy: Mapping[str, Any],
    jitter: Callable[[], float] = lambda: random.uniform(0.5, 1.0),
) -> Backoff | GiveUp:
    """What to do after a failure; ``policy`` is ``[worker]`` (retry_initial_wait,
    retry_max_wait, give_up_after); ``attempts`` counts the failures before this one."""
    first = now if first_failure_at is None else first_failure_at
    if not transient:
        return GiveUp(reason)
    if now - first >= float(policy["give_up_after"]):
        return GiveUp(f"gave up after {now - first:.0f} s: {reason}")
    initial = float(policy["retry_initial_wait"])
    cap = float(policy["retry_max_wait"])
    wait = min(cap, initial * 2**attempts) * jitter()
    return Backoff(now + wait, wait)
