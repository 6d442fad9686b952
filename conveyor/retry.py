"""Back-off between attempts: one pure function for the queue and every HTTP client.

Jitter is an argument, not a random draw made here, so a policy that must stay
deterministic passes none and a client passes a fresh draw per retry.
"""

from __future__ import annotations

from datetime import UTC
from email.utils import parsedate_to_datetime


def backoff_s(base_s: float, cap_s: float, attempt: int, jitter: float = 0.0) -> float:
    """Delay before retry number `attempt` (0-based): doubling from `base_s`, capped at `cap_s`.

    `jitter` in [0, 1) is the share of the delay taken off, so retries of many
    callers that failed together spread out instead of arriving together.
    """
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    # The exponent is bounded first: a huge attempt number must not overflow a float.
    delay = min(cap_s, base_s * 2.0 ** min(max(0, attempt), 64))
    return float(delay * (1.0 - jitter))


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds a `Retry-After` value asks for (delta seconds or an HTTP date); None if unusable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        # RFC 9110 dates are GMT; `-0000` parses naive but means the same.
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


def write_retry_delay_s(
    attempt: int, elapsed_s: float, budget_s: float, *, base_s: float = 0.05, cap_s: float = 1.0
) -> float | None:
    """Delay before trying again a bus write whose try `attempt` (0-based) got no answer.

    None once `budget_s` since the first try is spent. A JetStream stream is leaderless
    for 4-9 s after its leader node dies and its writes fail fast meanwhile, so the
    budget is counted in time, not in tries, and the last delay is cut to what is left.
    """
    left = budget_s - elapsed_s
    if left <= 0:
        return None
    return min(backoff_s(base_s, cap_s, attempt), left)
