"""Fakes of the registry's ports (model registry, spec store), for registry service tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.registry.ports import ModelSummary, VersionInfo
from shared.catalog import InMemorySpecSource, RegisteredSpec
from shared.errors import DependencyUnavailableError, NotFoundError
from shared.spec import ModelSpec


@dataclass
class FakeModelRegistry:
    """Versions, tags and aliases in dicts; knows which runs exist."""

    runs: set[str] = field(default_factory=set)
    versions: dict[str, list[VersionInfo]] = field(default_factory=dict)
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)

    def register(self, name: str, model_uri: str, run_id: str) -> str:
        for v in self.versions.get(name, []):
            if v.run_id == run_id:
                return v.version
        if run_id not in self.runs:
            raise NotFoundError(f"no model at {model_uri}")
        versions = self.versions.setdefault(name, [])
        versions.append(VersionInfo(version=str(len(versions) + 1), run_id=run_id))
        return versions[-1].version

    def set_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        self._version(name, version).tags.update(tags)

    def alias_version(self, name: str, alias: str) -> str | None:
        return self.aliases.get(name, {}).get(alias)

    def all_aliases(self, name: str) -> dict[str, str]:
        return dict(self.aliases.get(name, {}))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases.setdefault(name, {})[alias] = version

    def list_versions(self, name: str) -> list[VersionInfo]:
        if name not in self.versions:
            raise NotFoundError(f"no registered model named {name!r}")
        names = self.aliases.get(name, {})
        return [
            VersionInfo(
                v.version, v.run_id, tuple(a for a, n in names.items() if n == v.version), v.tags
            )
            for v in reversed(self.versions[name])
        ]

    def delete_alias(self, name: str, alias: str) -> None:
        self.aliases.get(name, {}).pop(alias, None)

    def list_models(self) -> list[str]:
        return sorted(self.versions)

    def model_summaries(self) -> list[ModelSummary]:
        return [ModelSummary(name, self.all_aliases(name)) for name in self.list_models()]

    def run_tags(self, run_id: str) -> dict[str, str]:
        return {"flywheel.trigger": "drift", "flywheel.trigger_ids": "e1,e2"}

    def _version(self, name: str, version: str) -> VersionInfo:
        return next(v for v in self.versions[name] if v.version == version)


class FakeSpecStore(InMemorySpecSource):
    """Specs in a dict, written as the MLflow store writes them (one more revision each)."""

    def __init__(self, specs: dict[str, RegisteredSpec] | None = None) -> None:
        super().__init__(specs)
        self.down = False
        self.writes: list[tuple[str, int, str]] = []

    def registered_spec(self, name: str) -> RegisteredSpec | None:
        if self.down:
            raise DependencyUnavailableError("MLflow unreachable: connection refused")
        return super().registered_spec(name)

    def register(self, name: str, spec: ModelSpec, requested_by: str) -> RegisteredSpec:
        current = self.specs.get(name)
        stored = RegisteredSpec((current.revision if current else 0) + 1, spec)
        self.specs[name] = stored
        self.writes.append((name, stored.revision, requested_by))
        return stored
