"""Promotion and rollback: move the champion alias in MLflow and say so on Kafka."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.registry.ports import ModelRegistry
from shared.aliases import (
    CHALLENGER,
    CHAMPION,
    AliasMoves,
    in_applying_order,
    promotion_moves,
    rollback_moves,
)
from shared.errors import NotFoundError
from shared.events import ModelPromoted, ModelRolledBack
from shared.messaging import EventPublisher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryAdmin:
    """Champion changes asked for by a person (CLI, HTTP) or, later, by the router."""

    models: ModelRegistry
    publisher: EventPublisher

    async def promote(
        self, name: str, version: str | None, reason: str, requested_by: str = "admin"
    ) -> ModelPromoted:
        """Make ``version`` (default: the challenger) champion; publish ModelPromoted."""
        aliases = await asyncio.to_thread(self.models.all_aliases, name)
        target = version or aliases.get(CHALLENGER)
        if target is None:
            raise NotFoundError(f"{name} has no challenger to promote; name a version")
        await asyncio.to_thread(self._check_version, name, target)
        await asyncio.to_thread(self._apply, name, promotion_moves(aliases, target))
        event = ModelPromoted(
            producer="registry",
            model_name=name,
            version=target,
            previous_champion=aliases.get(CHAMPION),
            reason=reason,
            requested_by=requested_by,
        )
        await self.publisher.publish(event)
        log.info("champion promoted", extra={"model": name, "version": target})
        return event

    async def rollback(
        self, name: str, reason: str, requested_by: str = "admin"
    ) -> ModelRolledBack:
        """Give the champion alias back to the previous champion; publish ModelRolledBack."""
        aliases = await asyncio.to_thread(self.models.all_aliases, name)
        try:
            moves = rollback_moves(aliases)
        except LookupError as error:
            raise NotFoundError(f"{name}: {error}") from error
        await asyncio.to_thread(self._apply, name, moves)
        event = ModelRolledBack(
            producer="registry",
            model_name=name,
            version=str(moves[CHAMPION]),
            rolled_back_version=aliases.get(CHAMPION, "none"),
            reason=reason,
            requested_by=requested_by,
        )
        await self.publisher.publish(event)
        log.info("champion rolled back", extra={"model": name, "version": event.version})
        return event

    def _check_version(self, name: str, version: str) -> None:
        if all(v.version != version for v in self.models.list_versions(name)):
            raise NotFoundError(f"{name} has no version {version}")

    def _apply(self, name: str, moves: AliasMoves) -> None:
        for alias, target in in_applying_order(moves):
            if target is None:
                self.models.delete_alias(name, alias)
            else:
                self.models.set_alias(name, alias, target)
