"""Small mutable facts about this process that handlers and background tasks share."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(slots=True)
class ServiceState:
    """Process-local state; one instance per application."""

    shutting_down: bool = False
    cleanup_deadline: float | None = None

    def cleanup_seconds(self, budget_seconds: float, *, at_most: float | None = None) -> float:
        """What is left of the one cleanup budget all cleanup contexts share (it starts at the first call).

        They wait one after another (loops, listeners, the revocation channel); each waiting its own full
        ``shutdown_timeout_seconds`` would add up past what the process manager grants (consumer.server).
        ``at_most``: for work that can simply start again after a restart (a sweep, a reconciliation), so
        that it leaves the budget to the listeners' work on events the registry will not send again.
        """
        now = time.monotonic()
        if self.cleanup_deadline is None:
            self.cleanup_deadline = now + budget_seconds
        left = max(0.0, self.cleanup_deadline - now)
        return left if at_most is None else min(left, at_most)
