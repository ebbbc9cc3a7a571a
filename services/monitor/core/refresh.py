"""When a model's reference is looked up again, and how long a failing model is held."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class ReferenceRefresh:
    """The champion alias is looked up every ``every_s``, or at once after a promotion.

    >>> refresh = ReferenceRefresh(every_s=30.0)
    >>> refresh.due(now=0.0, loaded=False), refresh.lookup(now=0.0)
    (True, None)
    >>> refresh.due(now=10.0, loaded=True), refresh.due(now=30.0, loaded=True)
    (False, True)
    >>> refresh.want("8")
    >>> refresh.due(now=11.0, loaded=True), refresh.lookup(now=11.0)
    (True, '8')
    >>> refresh.found()
    >>> refresh.lookup(now=12.0) is None
    True
    """

    every_s: float
    checked_at: float = -math.inf
    wanted: str | None = None
    """The version a promotion or rollback named, looked up by version, not alias."""

    def due(self, now: float, loaded: bool) -> bool:
        """Whether to look the reference up now (always while none is loaded)."""
        return not loaded or now - self.checked_at >= self.every_s

    def want(self, version: str) -> None:
        """Look ``version`` up at the next chance."""
        self.wanted, self.checked_at = version, -math.inf

    def lookup(self, now: float) -> str | None:
        """Note a look-up at ``now``; the version to look up (None: the champion alias)."""
        self.checked_at = now
        return self.wanted

    def found(self) -> None:
        """The look-up succeeded: the wanted version is served (a failed one is tried again)."""
        self.wanted = None


@dataclass
class Hold:
    """A model whose reference failed to load fails at once for ``hold_s``.

    Its events then dead-letter without another slow look-up each, and the
    other models' events in the same batch are not kept waiting behind them.

    >>> hold = Hold(hold_s=30.0)
    >>> hold.trip(now=0.0, cause="OSError('disk')")
    >>> hold.cause(now=10.0), hold.cause(now=30.0)
    ("OSError('disk')", None)
    >>> hold.trip(now=40.0, cause="again"); hold.release(); hold.cause(now=41.0) is None
    True
    """

    hold_s: float
    until: float = -math.inf
    why: str = ""

    def trip(self, now: float, cause: str) -> None:
        """Hold the model from ``now`` because of ``cause``."""
        self.until, self.why = now + self.hold_s, cause

    def release(self) -> None:
        """Try the model again at once (its champion changed: the new one may load)."""
        self.until = -math.inf

    def cause(self, now: float) -> str | None:
        """Why the model is held at ``now``; None when it is not."""
        return self.why if now < self.until else None
