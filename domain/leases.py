"""LeasePolicy: which process owns the runs it starts, and how long a silent owner is trusted."""

from __future__ import annotations

from dataclasses import dataclass

# agent_error of a run whose process stopped and that cannot go on elsewhere (past
# runs.max_takeovers, stranded by an outage, or its checkpoint unreadable).
INTERRUPTED = "interrupted"
INTERRUPTED_MESSAGE = ("The server running this request stopped before it finished; "
                       "please send your message again.")


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    owner: str
    ttl_s: float

    @property
    def interval_s(self) -> float:
        """Leases are renewed this often: a third of the ttl, so two renewals may fail in a row."""
        return self.ttl_s / 3
