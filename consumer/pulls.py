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
from consumer.settings import RegistrySettings, Settings


class PullFilter:
    """Turns the pulls of ignored user agents and actors into ``IGNORED`` changes."""

    def __init__(self, user_agents: tuple[str, ...] = (), actors: tuple[str, ...] = ()) -> None:
        self._user_agents = [text_glob(glob) for glob in user_agents]
        self._actors = [text_glob(glob) for glob in actors]

    @classmethod
    def for_settings(cls, settings: Settings) -> PullFilter:
        """``ignore_pulls`` plus the user agent the consumer's own registry client sends."""
        registry = settings.registry
        own = registry.user_agent if registry is not None else RegistrySettings.model_fields["user_agent"].default
        return cls((own, *settings.ignore_pulls.user_agents), settings.ignore_pulls.actors)

    def ignores(self, change: Change) -> bool:
        """Whether ``change`` is a pull that does not count."""
        if change.kind is not ChangeKind.PULL:
            return False
        agent, actor = change.user_agent or "", change.actor or ""
        return any(p.match(agent) for p in self._user_agents) or any(p.match(actor) for p in self._actors)

    def apply(self, change: Change) -> Change:
        """``change``, or the same event as ``IGNORED`` when it is a pull that does not count."""
        return dataclasses.replace(change, kind=ChangeKind.IGNORED) if self.ignores(change) else change
