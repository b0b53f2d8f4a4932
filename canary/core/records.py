"""Typed records: the release's state and every record its journal holds, with one JSON form.

The journal, ``status``, ``history``, ``check --json``, the report, the pushed
metrics and the API's ``on_event`` all speak these models. Each serialises to
JSON with snake_case keys and a version field ``v``; ``parse`` reads any
version this code has written, upgrading the file journals of earlier versions
(version 1, no ``v``) on the way, so old journals stay readable. Pure; no I/O.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_serializer

from canary.core import exitcodes, routing

VERSION = 2


class Phase(enum.StrEnum):
    INITIALIZING = "Initializing"
    PROGRESSING = "Progressing"
    WAITING_PROMOTION = "WaitingPromotion"
    WAITING_DECISION = "WaitingDecision"
    PROMOTING = "Promoting"
    FINALISING = "Finalising"
    SUCCEEDED = "Succeeded"
    PROMOTED_UNVERIFIED = "PromotedUnverified"
    ROLLING_BACK = "RollingBack"
    FAILED = "Failed"
    ABORTED = "Aborted"


#: Phases the release loop stops at.
TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED, Phase.PROMOTED_UNVERIFIED})
#: Phases after which a new release may start (PromotedUnverified must be verified by resume first).
ENDED = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED})
#: Phases in which an abort is refused: the new version passed every check.
PROMOTION = frozenset({Phase.PROMOTING, Phase.FINALISING})
#: the phases in which a release takes ``promote --skip-analysis``: before promotion, not rolling back
SKIPPABLE = frozenset({Phase.INITIALIZING, Phase.PROGRESSING, Phase.WAITING_PROMOTION, Phase.WAITING_DECISION})


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NO_DATA = "no-data"
    ERROR = "error"
    INCONCLUSIVE = "inconclusive"


class Effect(enum.StrEnum):
    """What a check means for the tick once the policies are applied."""

    PASS = "pass"
    FAIL = "fail"
    HOLD = "hold"  # no data under a hold policy or a warm-up, or too little evidence: judge again
    INCONCLUSIVE = "inconclusive"  # in the marginal band: a person decides
    NONE = "none"  # a dry-run metric: recorded, never acted on


class Outcome(enum.StrEnum):
    ADVANCE = "advance"  # every check passed
    HOLD = "hold"  # nothing failed, something could not be judged yet
    INCONCLUSIVE = "inconclusive"  # nothing failed, something is marginal: wait for a person
    FAIL = "fail"  # a check failed; the step holds and the counts go up
    ROLLBACK = "rollback"  # threshold failures in a row or failureLimit in all: roll back now


@dataclass(frozen=True)
class HookResult:
    """One webhook or alert call: whether it succeeded, how long it took, what it said."""

    name: str
    type: str
    ok: bool
    seconds: float
    detail: str


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Bounds(_Record):
    min: float | None = None
    max: float | None = None

    def __str__(self) -> str:
        if self.min is not None and self.max is not None:
            return f"[{self.min:g}, {self.max:g}]"
        if self.max is not None:
            return f"max {self.max:g}"
        return f"min {self.min:g}" if self.min is not None else "none"


class Check(_Record):
    """One metric's evaluation at one tick: the query as sent, the value, the range, the verdict."""

    metric: str
    query: str = ""
    value: float | None = None
    threshold_range: Bounds | None = None
    verdict: Verdict
    effect: Effect
    reason: str
    #: the same query for stable, in the same window, when the metric is compared with stable
    stable_query: str | None = None
    stable_value: float | None = None
    #: the comparison with stable: its range, applied to canary − stable ("difference") or canary / stable ("ratio")
    compare_range: Bounds | None = None
    compare_by: str | None = None
    #: canary requests in the window, and the confidence bound they allow, for a rate metric
    requests: float | None = None
    bound: float | None = None
    #: the Mann–Whitney judge: the shift's confidence interval and the samples on each side
    interval_low: float | None = None
    interval_high: float | None = None
    samples: tuple[int, int] | None = None
    dry_run: bool = False
    weight: float = 1.0


class TrackPin(_Record):
    """What one track runs: the pod template (as the user wrote it) and its hash, the main image."""

    template: dict[str, Any]
    hash: str
    image: str = ""
    config_hashes: dict[str, str] = {}
    #: the port its Services target (a release may change it); None in pins recorded before it was kept
    port: int | None = None
    #: the ``appProtocol`` its Services give the gateway ("" for none); None in pins recorded before it was kept
    app_protocol: str | None = None

    def program_pin(self) -> dict[str, Any]:
        """The pin as the program reads it from a release config (``canary:release``), the keys it did not record left out."""
        out: dict[str, Any] = {"template": self.template, "hash": self.hash, "image": self.image, "config_hashes": dict(self.config_hashes)}
        if self.port is not None:
            out["port"] = self.port
        if self.app_protocol is not None:
            out["appProtocol"] = self.app_protocol
        return out


class ReleaseState(_Record):
    """Everything a release needs to go on from any machine; replaced whole at every step."""

    v: int = VERSION
    release: str
    stack: str
    app: str
    namespace: str = ""
    phase: Phase
    stable: TrackPin | None = None
    canary: TrackPin | None = None
    #: the canary's share of the default rule, as the route shows it once a step is verified
    weight: int = 0
    #: the route's shape at the current step (see routing.RouteShape), its A/B match values never recorded
    route: dict[str, Any] = {}
    #: the step of the schedule reached (0: none yet; for weights the index into them, +1)
    step: int = 0
    #: a step being applied right now (the route may already show it)
    shifting_to: int | None = None
    #: the last tick passed (or none ran yet): the next step may be taken
    advance: bool = True
    #: the last tick passed, as ``advance`` says after a tick, but kept through a resume (which clears
    #: ``advance`` to judge the step again): a promote accepted on that tick stands. None: no tick yet
    passed: bool | None = None
    #: the last tick failed (below the rollback threshold): a promote needs --force, waiting for a decision too
    failed_last: bool = False
    canary_deployed: bool = False
    canary_replicas: int = 0
    failed_in_row: int = 0
    failed_total: int = 0
    #: when the current step's shift was verified (ISO time): the warm-up runs from here
    shifted_at: str = ""
    #: since when the release holds (no data, too little evidence) without a verdict
    holding_since: str = ""
    #: since when an inconclusive release waits for a person
    deciding_since: str = ""
    #: the session-affinity cookie's value for this release (sessionAffinity)
    affinity: str = ""
    paused: bool = False
    #: the phase a rollback ends in: Failed, or Aborted for a user abort
    rollback_to: Phase = Phase.FAILED
    rollback_step: int = 0
    promotion_step: int = 0
    #: the phase the release was in when the rollback began (a promotion may have changed stable)
    rolled_back_from: Phase | None = None
    reason: str = ""
    started: str = ""
    updated: str = ""
    last_checks: tuple[Check, ...] = ()
    rollback_pending: bool = False
    #: set by resume: put the recorded step back in the route before judging it again
    reapply: bool = False
    #: the stack file as the release began (secrets still encrypted): what a rollback applies
    snapshot: str = ""
    #: keys of the stack file changed during the release: not applied by the rollback, kept
    unapplied: tuple[str, ...] = ()
    #: why a promotion went ahead without a passing tick (promote --force, --skip-analysis)
    forced: str = ""
    verified: bool = False
    #: the phase the app's previous release ended in (None: the app's first release); a confirm-rollout
    #: hook is told it, as Flagger tells it the Canary's status before a new revision starts
    before: Phase | None = None
    #: a confirm-rollout hook said no: Flagger's Canary is Waiting from then on, and its hooks are told so
    waiting: bool = False
    #: the release ended (Succeeded, Failed, Aborted) and its post-rollout hooks have not run yet: saved with the
    #: end, cleared once they ran, so that a process killed in between leaves them to ``resume``. A state saved
    #: before this was kept owes none
    post_rollout_owed: bool = False

    @field_serializer("route")
    def _route(self, route: dict[str, Any]) -> dict[str, Any]:
        # a state of an earlier version, loaded as it was saved, is saved and printed without its match values
        return routing.recorded(route)

    @property
    def last_tick_passed(self) -> bool:
        """Whether ``promote`` (without --force) may promote: the last tick passed, before a resume or since."""
        return self.advance or bool(self.passed)

    @property
    def promote_needs_force(self) -> bool:
        """Whether a plain ``promote`` is no answer here: waiting for promotion after a tick that did not pass, or
        waiting for a decision (on an inconclusive tick) after one that failed since."""
        return ((self.phase is Phase.WAITING_PROMOTION and not self.last_tick_passed)
                or (self.phase is Phase.WAITING_DECISION and self.failed_last))

    @property
    def running_phase(self) -> bool:
        return self.phase not in TERMINAL

    @property
    def exit_code(self) -> int:
        return exitcodes.for_phase(self.phase.value, self.rollback_pending)

    @property
    def ended_exit_code(self) -> int | None:
        """The exit code the release ended with (as ``canary release`` exits); None while it is not finished: a
        release in progress is neither promoted nor failed. A pending rollback is an ending (4): resume completes it."""
        return self.exit_code if self.phase in TERMINAL or self.rollback_pending else None


# --- journal records ----------------------------------------------------------------------------


class _Entry(_Record):
    v: int = VERSION
    time: str
    stack: str = ""
    app: str = ""
    release: str
    phase: str = ""
    weight: int = 0


class Decision(_Entry):
    """A decision, recorded before it is acted on."""

    type: Literal["decision"] = "decision"
    message: str


class StateChange(_Entry):
    """The release's state was saved; ``message`` says why."""

    type: Literal["state"] = "state"
    message: str
    failed_in_row: int = 0
    failed_total: int = 0
    details: dict[str, Any] = {}


class EventRecord(_Entry):
    """Something worth telling that is neither a decision nor a state change."""

    type: Literal["event"] = "event"
    message: str


class Up(_Entry):
    """One ``up`` of the stack: which resources it was limited to, what the release config pinned."""

    type: Literal["up"] = "up"
    targets: tuple[str, ...] = ()
    pinned: dict[str, Any] = {}
    refreshed: bool = False
    seconds: float = 0.0
    changes: dict[str, int] = {}

    @field_serializer("pinned")
    def _pinned(self, pinned: dict[str, Any]) -> dict[str, Any]:
        # the route pinned, as the state's: a record of an earlier version is printed without its match values
        route = pinned.get("route")
        return {**pinned, "route": routing.recorded(route)} if isinstance(route, dict) else pinned


class Tick(_Entry):
    """One analysis tick: every check and the outcome."""

    type: Literal["tick"] = "tick"
    outcome: Outcome
    failed_in_row: int
    failed_total: int = 0
    threshold: int
    failure_limit: int = 0
    reason: str
    checks: tuple[Check, ...] = ()
    score: float | None = None


class WebhookCall(_Entry):
    type: Literal["webhook"] = "webhook"
    name: str
    hook_type: str
    ok: bool
    seconds: float = 0.0
    detail: str = ""


class Verified(_Entry):
    """The cluster was seen in an expected state (the canary ready, the end state …)."""

    type: Literal["verified"] = "verified"
    what: str
    details: dict[str, Any] = {}


class Snapshot(_Entry):
    """The stable state captured when the release began."""

    type: Literal["snapshot"] = "snapshot"
    stable_hash: str = ""
    stable_image: str = ""
    #: where the stack's export (its state, secrets encrypted) was kept for audit
    export: str = ""


class Request(_Entry):
    """A request from a command (abort, promote, pause, continue), possibly from another machine."""

    type: Literal["request"] = "request"
    request: str
    by: str = ""
    reason: str = ""


Entry = Annotated[Decision | StateChange | EventRecord | Up | Tick | WebhookCall | Verified | Snapshot | Request, Field(discriminator="type")]
_ENTRY = TypeAdapter(Entry)


def dump(record: BaseModel) -> dict[str, Any]:
    """The one JSON form of a record or a state."""
    return record.model_dump(mode="json", exclude_none=True)


def finite_json(data: Any) -> Any:
    """``data`` (plain JSON data) with every non-finite number written as a string, "+Inf", "-Inf" or "NaN": JSON
    has no such number, and Python's ``Infinity`` is refused by other parsers (a p99 in the +Inf bucket is the
    slowest canary, exactly the one a script reads about)."""
    if isinstance(data, float) and not math.isfinite(data):
        return "NaN" if math.isnan(data) else "+Inf" if data > 0 else "-Inf"  # as Prometheus spells them
    if isinstance(data, dict):
        return {key: finite_json(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [finite_json(value) for value in data]
    return data


#: the longest text a journal record keeps of one field: a record is one line of a ConfigMap chunk (the API
#: server refuses an object over 1 MiB), and a record refused for its size held back every record after it
FIELD_CHARS = 8192


def bounded(data: Any, limit: int = FIELD_CHARS) -> Any:
    """``data`` (a record's JSON form) with every text longer than ``limit`` cut there and said so."""
    if isinstance(data, str) and len(data) > limit:
        return f"{data[:limit]}… (cut: {len(data)} characters)"
    if isinstance(data, dict):
        return {key: bounded(value, limit) for key, value in data.items()}
    if isinstance(data, list):
        return [bounded(value, limit) for value in data]
    return data


def parse(data: Mapping[str, Any]) -> Decision | StateChange | EventRecord | Up | Tick | WebhookCall | Verified | Snapshot | Request:
    """A journal record from its JSON form, of this version or an earlier one."""
    return _ENTRY.validate_python(_upgrade(dict(data)))


def parse_state(data: Mapping[str, Any]) -> ReleaseState:
    return ReleaseState.model_validate(_upgrade_state(dict(data)))


def _upgrade_check(check: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(check)
    if "threshold" in out and "threshold_range" not in out:
        out["threshold_range"] = out.pop("threshold")
    if "thresholdRange" in out:
        out["threshold_range"] = out.pop("thresholdRange")
    return out


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 (the file journal of canary 0.1) to version 2."""
    if data.get("v", 1) >= VERSION:
        return data
    kind = data.get("type")
    data["v"] = VERSION
    if kind == "tick":
        data["checks"] = [_upgrade_check(c) for c in data.get("checks") or []]
    elif kind == "up":
        targeted = data.pop("targeted", ())
        data["targets"] = targeted if isinstance(targeted, list) else (["route"] if targeted else [])
        data["pinned"] = data.pop("config", {}) or {}
    elif kind == "verified":
        data["what"] = "end state"
        data["details"] = {k: data.pop(k) for k in ("stable_image", "route", "canary_pods", "stable_ready") if k in data}
    elif kind == "snapshot":
        config = data.pop("config", {}) or {}
        data["stable_image"] = str(config.get("stableImage") or "")
        data["export"] = str(data.pop("export_file", ""))
    elif kind == "state":
        data["details"] = {k: data.pop(k) for k in list(data) if k not in _Entry.model_fields and k not in ("type", "message", "failed_in_row")}
    elif kind == "request":
        data.setdefault("by", "")
    return data


def _upgrade_state(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("v", 1) >= VERSION:
        return data
    data["v"] = VERSION
    data.setdefault("app", "")
    for track in ("stable", "canary"):
        image = data.pop(f"{track}_image", None)
        if image:
            data[track] = {"template": {}, "hash": "", "image": image}
    data["last_checks"] = [_upgrade_check(c) for c in data.get("last_checks") or []]
    return data


def is_legacy(data: Mapping[str, Any]) -> bool:
    """A state written by the file journal of canary 0.1."""
    return "v" not in data
