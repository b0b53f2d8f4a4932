"""Exit codes of every ``canary`` command, in one place (the README's table).

0  promoted, valid, or done
1  rolled back, failed or aborted; a check that did not pass; a lab component not running
2  invalid input: config, arguments, manifests, a stack that does not exist, a query Prometheus rejects
3  busy: another release holds the app, an unfinished release must be resumed first, or the stack
   is locked by another update
4  a rollback could not be applied yet: ``canary resume`` completes it
5  promoted, but the end state could not be verified: ``canary resume`` verifies it
"""

from __future__ import annotations

from canary.errors import InvalidSpec, StackBusy, StackLocked, StackNotFound

OK = 0
FAILED = 1
INVALID = 2
BUSY = 3
ROLLBACK_PENDING = 4
PROMOTED_UNVERIFIED = 5

_BY_PHASE = {"Succeeded": OK, "Failed": FAILED, "Aborted": FAILED, "PromotedUnverified": PROMOTED_UNVERIFIED}


def for_phase(phase: str, rollback_pending: bool = False) -> int:
    """The exit code a release command ends with in ``phase``."""
    if rollback_pending:
        return ROLLBACK_PENDING
    return _BY_PHASE.get(phase, FAILED)


def for_error(exc: BaseException) -> int:
    """The exit code a command ends with when ``exc`` (one of the project's errors) stops it."""
    if isinstance(exc, InvalidSpec | StackNotFound):  # a stack named that does not exist is bad input
        return INVALID
    if isinstance(exc, StackBusy | StackLocked):
        return BUSY
    return FAILED
