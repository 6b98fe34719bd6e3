"""The ledger: every prompt id handed out ends as exactly one of trained or dropped(reason).

It is saved with every checkpoint; `check()` runs at the end of every run and after resume.
"""

from __future__ import annotations

from collections import Counter

PENDING = "pending"
TRAINED = "trained"


class LedgerError(RuntimeError):
    pass


class Ledger:
    def __init__(self) -> None:
        self.status: dict[int, str] = {}  # prompt_id -> pending | trained | dropped:<reason>
        self.open: set[int] = set()  # the pending ids (kept with status, for O(1) queries)

    def issue(self, prompt_id: int) -> None:
        if prompt_id in self.status and self.status[prompt_id] != PENDING:
            raise LedgerError(f"prompt {prompt_id} issued again after {self.status[prompt_id]}")
        self.status[prompt_id] = PENDING
        self.open.add(prompt_id)

    def is_pending(self, prompt_id: int) -> bool:
        return self.status.get(prompt_id) == PENDING

    def trained(self, prompt_id: int) -> None:
        self._close(prompt_id, TRAINED)

    def dropped(self, prompt_id: int, reason: str) -> None:
        self._close(prompt_id, f"dropped:{reason}")

    def _close(self, prompt_id: int, outcome: str) -> None:
        current = self.status.get(prompt_id)
        if current != PENDING:
            raise LedgerError(f"prompt {prompt_id}: cannot mark {outcome}, it is {current}")
        self.status[prompt_id] = outcome
        self.open.discard(prompt_id)

    def pending(self) -> list[int]:
        return sorted(self.open)

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.status.values()))

    def check(self, *, allow_pending: bool = False) -> dict[str, int]:
        """Every id is trained or dropped(reason) (or pending, mid-run). Raises otherwise."""
        counts = self.counts()
        ok = (TRAINED, PENDING) if allow_pending else (TRAINED,)
        bad = {s: n for s, n in counts.items() if s not in ok and not s.startswith("dropped:")}
        if bad:
            raise LedgerError(f"ledger not balanced: {bad} (all counts: {counts})")
        return counts

    def to_json(self) -> dict:
        return {str(k): v for k, v in self.status.items()}

    @classmethod
    def from_json(cls, data: dict) -> Ledger:
        ledger = cls()
        ledger.status = {int(k): v for k, v in data.items()}
        ledger.open = {k for k, v in ledger.status.items() if v == PENDING}
        return ledger
