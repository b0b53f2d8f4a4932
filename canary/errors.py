"""The one error tree of canary, and what the caller should do with each branch.

::

    CanaryError                      base; never raised itself
    ├── InvalidSpec                  refuse to start: bad config, bad CLI input, bad manifest (exit 2)
    │                                  carries every problem as (field, value, rule)
    ├── MetricError                  one check could not produce a value: a failed check, never a pass
    │   ├── NoValues                 empty result or NaN ("the canary receives no traffic yet")
    │   ├── MultipleValues           the query returned several series; it must reduce to one
    │   ├── BadQuery                 the provider rejected the query (a config defect)
    │   └── ProviderUnreachable      the provider did not answer in time (temporary)
    ├── Temporary                    retry with back-off; give up as the phase says
    │   ├── ClusterUnreachable       the API server did not answer
    │   ├── NotReady                 a Deployment (or the end state) was not there within its bound
    │   ├── StackLocked              Pulumi's lock is held by another update: wait for it
    │   └── Conflict                 an object changed since it was read (resourceVersion): read it again
    ├── StackError                   the stack could not be read or updated (permanent)
    │   ├── StackNotFound            no such stack: the name given is bad input (exit 2)
    │   └── Forbidden                the cluster refused (401/403), or there is no kubeconfig
    ├── StackBusy                    another release holds the app, or one must be resumed first (exit 3)
    │   └── LeaseLost                this release's process no longer holds the app: it stops, changing nothing
    ├── RouteNotAccepted             the gateway refused the route: traffic did not shift (roll back)
    ├── Cancelled                    an abort or a signal stopped the action in progress
    ├── RollbackPending              stable could not be re-applied; `canary resume` completes it (exit 4)
    └── LabError                     a lab component could not start; names it and its log

Every lower-level exception is mapped to the most specific class here, with
``raise ... from exc`` so the original stays available as ``__cause__``.
Messages never contain secret values (tokens, passphrases).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class CanaryError(Exception):
    """Base of every error canary raises on purpose."""

    #: what was noted before the failure, shown with it (an import's notes: a field left out often explains the refusal)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Problem:
    """One reason an input is refused: which field, what value, which rule."""

    field: str
    value: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule} (got {self.value})"


def broken_rules(problems: Iterable[Problem]) -> str:
    """Each problem's field and rule, without its value: what a note may say of a config whose values may be secrets."""
    return "; ".join(f"{p.field}: {p.rule}" for p in problems)


class InvalidSpec(CanaryError):
    """Input refused before anything was applied."""

    def __init__(self, problems: Sequence[Problem], source: str = "") -> None:
        self.problems = tuple(problems)
        self.source = source
        head = f"invalid {source}" if source else "invalid input"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head}:\n{lines}")


class MetricError(CanaryError):
    """A metric query that produced no usable value."""


class NoValues(MetricError):
    """The query returned no sample, or NaN: typically no traffic reached the canary yet."""


class MultipleValues(MetricError):
    """The query returned several series where one scalar was expected."""


class BadQuery(MetricError):
    """The provider refused the query as malformed."""


class ProviderUnreachable(MetricError):
    """The metrics provider could not be reached or timed out."""


class Temporary(CanaryError):
    """Worth trying again after a pause: the condition is expected to pass."""


class ClusterUnreachable(Temporary):
    """The Kubernetes API server did not answer."""


class NotReady(Temporary):
    """Something in the cluster was not (yet) in the state asked for within its bound."""


class StackLocked(Temporary):
    """Pulumi's lock on the stack is held by another update."""


class Conflict(Temporary):
    """A write lost a race: the object's resourceVersion changed since it was read."""


class StackError(CanaryError):
    """The Pulumi stack could not be read or updated."""


class StackNotFound(StackError):
    """The named stack does not exist."""


class Forbidden(StackError):
    """The cluster refused the credentials (401/403), or there are none to use."""


class Refused(StackError):
    """The cluster refused a write as it is (an invalid or too large object, an admission policy, a
    quota): sent again unchanged, it is refused again."""


class StackBusy(CanaryError):
    """Another release holds the app (its lease), or an unfinished release must be resumed first."""


class LeaseLost(StackBusy):
    """The app's lease was taken by another process (or could not be renewed before it ran out), or the
    release state was written by another: this release stops where it is, never rolls back over it."""


class RouteNotAccepted(CanaryError):
    """The gateway refused the route, or never accepted it: traffic did not shift as asked."""


class Cancelled(CanaryError):
    """An abort request or a signal stopped the action in progress."""


class RollbackPending(CanaryError):
    """A rollback could not be applied (e.g. the API server is down); the journal says so."""


class LabError(CanaryError):
    """A lab component failed to start or stop."""
