"""Buttons on a run's page for what execution offers to do with a run (cancel, retry)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aias.gateway.dashboard.client import EXECUTION_SERVICE


@dataclass(frozen=True)
class RunAction:
    """A POST button: its URL segment, its label, the RPC it calls and when it is shown."""

    name: str
    label: str
    rpc: str
    statuses: frozenset[str]


# Each button appears once execution's proto declares its RPC (with a `run_id` field), so the
# run lifecycle work needs no change here when it lands.
RUN_ACTIONS = (
    RunAction("cancel", "Cancel run", "CancelRun", frozenset({"queued", "running"})),
    RunAction(
        "retry", "Retry run", "RetryRun", frozenset({"succeeded", "failed", "skipped", "cancelled"})
    ),
)


def offered(actions: Iterable[RunAction]) -> dict[str, RunAction]:
    """The actions whose RPC the execution service declares and takes a run's id, by name."""
    found = {}
    for action in actions:
        method = EXECUTION_SERVICE.methods_by_name.get(action.rpc)
        if method is not None and "run_id" in method.input_type.fields_by_name:
            found[action.name] = action
    return found
