"""The registry's aliases and how a promotion or rollback moves them: one path for everyone.

The registry (``flywheel promote`` / ``rollback``) and the router (automatic
verdicts) both move ``champion``; both go through these moves, so the last
three champions stay one alias away whoever promoted, and a rollback after an
automatic promotion returns to the champion it replaced.
"""

from __future__ import annotations

from shared.events import Role

CHAMPION: Role = "champion"
CHALLENGER: Role = "challenger"

#: Aliases remembering earlier champions, most recent first: rollback walks back along them.
PREVIOUS_CHAMPIONS = ("champion-1", "champion-2", "champion-3")

AliasMoves = dict[str, str | None]


def promotion_moves(aliases: dict[str, str], version: str) -> AliasMoves:
    """Alias changes that make ``version`` champion and remember the one it replaces.

    ``None`` means delete the alias. The last three champions stay one alias away.

    >>> promotion_moves({"champion": "1", "challenger": "2"}, "2")
    {'champion': '2', 'challenger': None, 'champion-1': '1', 'champion-2': None, 'champion-3': None}
    """
    current = aliases.get(CHAMPION)
    moves: AliasMoves = {CHAMPION: version}
    if aliases.get(CHALLENGER) == version:
        moves[CHALLENGER] = None
    if current is None or current == version:
        return moves
    history = [current, *(aliases.get(a) for a in PREVIOUS_CHAMPIONS)]
    moves.update(zip(PREVIOUS_CHAMPIONS, history, strict=False))
    return moves


def rollback_moves(aliases: dict[str, str]) -> AliasMoves:
    """Alias changes that give the champion alias back to the previous champion.

    Raises LookupError when there is no earlier champion to return to.

    >>> rollback_moves({"champion": "3", "champion-1": "2", "champion-2": "1"})
    {'champion': '2', 'champion-1': '1', 'champion-2': None, 'champion-3': None}
    """
    previous = aliases.get(PREVIOUS_CHAMPIONS[0])
    if previous is None:
        raise LookupError("no previous champion to roll back to")
    older = [aliases.get(a) for a in PREVIOUS_CHAMPIONS[1:]] + [None]
    return {CHAMPION: previous, **dict(zip(PREVIOUS_CHAMPIONS, older, strict=True))}


def in_applying_order(moves: AliasMoves) -> list[tuple[str, str | None]]:
    """The moves with ``champion`` first, so readers never see a moment without one.

    >>> in_applying_order({"champion-1": "1", "champion": "2"})
    [('champion', '2'), ('champion-1', '1')]
    """
    return sorted(moves.items(), key=lambda move: move[0] != CHAMPION)
