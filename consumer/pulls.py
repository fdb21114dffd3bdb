"""Which pull events count as use of an image.

A pull moves a tag's ``last_pulled_at``, which ``pulled_within`` retention rules keep images by. Pulls that
are not use would keep everything: the consumer's own manifest reads (fixing ``latest``) and scanners that
pull every image on a schedule. Those are applied as ``ignored`` events instead (deduplicated and counted
like the rest, never indexed).
"""

from __future__ import annotations

import dataclasses

from consumer.envelope import Change, ChangeKind
from consumer.policy import text_glob
from consumer.registry_client import user_agent_of
from consumer.settings import Settings


class PullFilter:
    """Turns the pulls of ignored user agents and actors into ``IGNORED`` changes."""

    def __init__(self, user_agents: tuple[str, ...] = (), actors: tuple[str, ...] = (), *,
                 own_user_agent: str | None = None) -> None:
        self._user_agents = [text_glob(glob) for glob in user_agents]
        self._actors = [text_glob(glob) for glob in actors]
        self._own = own_user_agent  # matched exactly: not a glob

    @classmethod
    def for_settings(cls, settings: Settings) -> PullFilter:
        """``ignore_pulls`` plus the user agent the consumer's own registry client sends."""
        return cls(settings.ignore_pulls.user_agents, settings.ignore_pulls.actors,
                   own_user_agent=user_agent_of(settings.registry))

    def ignores(self, change: Change) -> bool:
        """Whether ``change`` is a pull that does not count."""
        if change.kind is not ChangeKind.PULL:
            return False
        agent, actor = change.user_agent or "", change.actor or ""
        return (agent == self._own or any(p.match(agent) for p in self._user_agents)
                or any(p.match(actor) for p in self._actors))

    def apply(self, change: Change) -> Change:
        """``change``, or the same event as ``IGNORED`` when it is a pull that does not count."""
        return dataclasses.replace(change, kind=ChangeKind.IGNORED) if self.ignores(change) else change
