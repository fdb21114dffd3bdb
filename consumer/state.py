"""Small mutable facts about this process that handlers and background tasks share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ServiceState:
    """Process-local state; one instance per application."""

    shutting_down: bool = False
