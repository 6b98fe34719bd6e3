"""PromptFlow: one prompt id's life as a pure state machine (no Ray), with the ledger.

    queued ──issue──► generating ──generated──► scoring ──buffered──► buffered ──batched──►
      ▲                   │                        │                                 training
      └───── requeue ─────┴────────────────────────┘                                    │
    (a worker lost: its prompts go back, lowest ids first)                trained ◄─────┤
    generating | scoring | buffered | training ──drop(reason)──► dropped(reason)   ◄────┘ (skipped)

`issue` takes requeued ids first, then new ids from the cursor (the ledger marks each pending;
one too long for the task is dropped at once). `rewind` puts the flow back to a checkpoint:
every id pending there is queued again, in id order; what was issued after it is forgotten.

The invariant, checked after every transition: the ledger's pending ids are exactly the ids in
a live stage (queued, generating, scoring, buffered, training), and each is in one stage. The
driver (services/pipeline.py) turns finished ObjectRefs into these transitions; recovery
(services/recovery.py) emits `requeue` and `rewind`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from services.ledger import Ledger

QUEUED, GENERATING, SCORING, BUFFERED, TRAINING = (
    "queued", "generating", "scoring", "buffered", "training")
LIVE = (QUEUED, GENERATING, SCORING, BUFFERED, TRAINING)


class FlowError(RuntimeError):
    """A transition from a stage that does not allow it (a bug in the driver)."""


class PromptFlow:
    def __init__(self, ledger: Ledger | None = None, cursor: int = 0) -> None:
        self.ledger = ledger or Ledger()
        self.cursor = cursor  # the next new prompt id
        self.stage: dict[int, str] = {}
        self.rewind(self.ledger, cursor)

    # -- transitions ------------------------------------------------------------------------

    def issue(self, n: int, too_long: Callable[[int], bool] = lambda pid: False
              ) -> tuple[list[int], list[int]]:
        """Up to n ids to generate (requeued first, then new): (issued, dropped too_long)."""
        issued = sorted(p for p, s in self.stage.items() if s == QUEUED)[:n]
        dropped = []
        while len(issued) < n:
            pid, self.cursor = self.cursor, self.cursor + 1
            self.ledger.issue(pid)
            self.stage[pid] = QUEUED
            if too_long(pid):
                self._close(pid, "dropped:too_long")
                dropped.append(pid)
            else:
                issued.append(pid)
        self._move(issued, QUEUED, GENERATING)
        return issued, dropped

    def generated(self, pids: Iterable[int]) -> None:
        self._move(pids, GENERATING, SCORING)

    def requeue(self, pids: Iterable[int]) -> None:
        """A worker's prompts lost (generating or being scored) go back to the queue."""
        self._move(pids, (GENERATING, SCORING), QUEUED)

    def buffered(self, pids: Iterable[int]) -> None:
        self._move(pids, SCORING, BUFFERED)

    def batched(self, pids: Iterable[int]) -> None:
        self._move(pids, BUFFERED, TRAINING)

    def trained(self, pids: Iterable[int]) -> None:
        for pid in self._checked(pids, TRAINING):
            self._close(pid, "trained")
        self.check()

    def drop(self, pid: int, reason: str) -> None:
        self._checked([pid], LIVE)
        self._close(pid, f"dropped:{reason}")
        self.check()

    def rewind(self, ledger: Ledger, cursor: int) -> None:
        """Back to a checkpoint's ledger (checked) and cursor: its pending ids are queued
        again."""
        ledger.check(allow_pending=True)
        self.ledger, self.cursor = ledger, cursor
        self.stage = {pid: QUEUED for pid in ledger.pending()}
        self.check()

    # -- queries ----------------------------------------------------------------------------

    def at(self, pid: int) -> str | None:
        """The live stage of `pid`, or None (never issued, trained or dropped)."""
        return self.stage.get(pid)

    def queued(self) -> list[int]:
        return sorted(p for p, s in self.stage.items() if s == QUEUED)

    def counts(self) -> dict[str, int]:
        return self.ledger.counts()

    def check(self) -> None:
        """The invariant: pending in the ledger <=> in a live stage (each in exactly one)."""
        pending, live = self.ledger.open, self.stage.keys()
        if pending != live:
            raise FlowError(f"ledger and flow disagree: pending only {sorted(pending - live)[:5]}"
                            f", live only {sorted(live - pending)[:5]}")

    # -- internals --------------------------------------------------------------------------

    def _checked(self, pids: Iterable[int], allowed: str | tuple[str, ...]) -> list[int]:
        allowed = (allowed,) if isinstance(allowed, str) else allowed
        pids = list(pids)
        for pid in pids:
            if self.stage.get(pid) not in allowed:
                raise FlowError(f"prompt {pid} is {self.stage.get(pid) or self._outcome(pid)}, "
                                f"not {' or '.join(allowed)}")
        return pids

    def _outcome(self, pid: int) -> str:
        return self.ledger.status.get(pid, "never issued")

    def _move(self, pids: Iterable[int], src: str | tuple[str, ...], dst: str) -> None:
        for pid in self._checked(pids, src):
            self.stage[pid] = dst
        self.check()

    def _close(self, pid: int, outcome: str) -> None:
        del self.stage[pid]
        if outcome == "trained":
            self.ledger.trained(pid)
        else:
            self.ledger.dropped(pid, outcome.removeprefix("dropped:"))
