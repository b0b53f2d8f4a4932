"""Names and labels: what canary calls the objects of an app, and how it marks the two tracks.

Pure; the only place these spellings live. The component declares objects with
these names and labels, the verifier and the store find them by them, and the
built-in metrics select canary pods by the canary Deployment's name.

The label contract (README, "Labels"):

- every pod of the app carries ``canary.dev/app: <app>`` and
  ``canary.dev/track: stable|canary``; the Deployments select on those two
  (immutable selectors, never the version);
- stable pods keep the template's own labels, so the team's Services and
  NetworkPolicies that select the app go on selecting stable;
- on canary pods the app-wide selector labels (``SELECTOR_LABELS``) get the
  ``-canary`` suffix, so a selector meant for the app never reaches the canary
  by accident; the selectors inside the canary's own template (pod affinity
  and anti-affinity, topology spread) that select the app by one of them get
  the suffix as well (``workload.for_track``), so that they count canary pods;
- ``canary.dev/template-hash`` (a pod template annotation) names the template
  a track runs, which verification compares.
"""

from __future__ import annotations

import enum

from canary.core import units

#: The config namespace of every key canary reads (``canary:app``, ``canary:release`` …).
CONFIG_NAMESPACE = "canary"
#: The Pulumi type token of the component.
COMPONENT_TYPE = "canary:index:CanaryDeployment"
#: The stack output each component exports, one per app: ``canary/<app>``.
OUTPUT_PREFIX = "canary/"

APP_LABEL = "canary.dev/app"
TRACK_LABEL = "canary.dev/track"
HASH_ANNOTATION = "canary.dev/template-hash"
#: On ConfigMap and Secret copies: the name they copy.
COPY_OF_LABEL = "canary.dev/copy-of"
#: On ConfigMap and Secret copies, one label per app that reads the copy (``copy.canary.dev/web: "true"``):
#: a copy is named by its content only, so two apps of one namespace reading the same config share one
#: object, each owning its own label (Server-Side Apply lets both declare it) and letting go of it alone.
COPY_USER_PREFIX = "copy.canary.dev/"
MANAGED_BY = "canary"
#: Labels a team commonly selects a whole app by; their values get ``-canary`` on canary pods.
SELECTOR_LABELS = ("app", "name", "app.kubernetes.io/name")


class Track(enum.StrEnum):
    STABLE = "stable"
    CANARY = "canary"


def deployment(app: str, track: Track) -> str:
    """``web-stable``, ``web-canary``: the Deployments, and the Services the route sends to."""
    return f"{app}-{track.value}"


def service(app: str, track: Track) -> str:
    return deployment(app, track)


def apex_service(app: str) -> str:
    """The Service named like the app, selecting stable pods only (in-cluster clients use it)."""
    return app


def owned_names(app: str) -> tuple[str, ...]:
    """The names of an app's Services and Deployments in its namespace: another app of that namespace owning
    one of them clashes (``web-canary`` beside ``web``, whose canary Service is ``web-canary``)."""
    return (apex_service(app), service(app, Track.STABLE), service(app, Track.CANARY))


def route(app: str) -> str:
    return app


def autoscaler(app: str, track: Track) -> str:
    return deployment(app, track)


def disruption_budget(app: str) -> str:
    return deployment(app, Track.STABLE)


def pod_monitor(app: str) -> str:
    return app


#: the longest ConfigMap or Secret name whose copy's name (``-`` and 10 hex more) is still a name Kubernetes takes
COPIED_NAME_MAX = 253 - 11


def copy_name(name: str, content_hash: str) -> str:
    """A ConfigMap or Secret copy named by its content: ``settings-3f2a9c01b4``."""
    return f"{name}-{content_hash[:10]}"


def check_copied_name(value: str) -> str:
    """A ConfigMap or Secret name canary copies: a DNS-1123 subdomain short enough for its copy's suffix."""
    units.check_dns_subdomain(value)
    if len(value) > COPIED_NAME_MAX:
        raise ValueError(f"must be at most {COPIED_NAME_MAX} characters ({len(value)} given): its copy is named "
                         "<name>-<10 hex of its content>, and Kubernetes takes names of at most 253")
    return value


def copy_user(app: str) -> str:
    """The label that says ``app`` reads a copy."""
    return f"{COPY_USER_PREFIX}{app}"


def copy_users(labels: dict[str, str]) -> set[str]:
    """The apps that read a copy, from its labels. A copy made before copies were shared carries its one app
    in ``APP_LABEL``, until that app's next ``up`` declares it anew (which drops that label)."""
    users = {key.removeprefix(COPY_USER_PREFIX) for key in labels if key.startswith(COPY_USER_PREFIX)}
    return users | ({labels[APP_LABEL]} if APP_LABEL in labels else set())


def selector(app: str, track: Track) -> dict[str, str]:
    """The Deployment's (immutable) selector and the Service's: app and track, never the version."""
    return {APP_LABEL: app, TRACK_LABEL: track.value}


def track_labels(app: str, track: Track, template_labels: dict[str, str]) -> dict[str, str]:
    """A track's pod labels from the template's: the selector labels added, and on the canary
    the app-wide selector labels' values suffixed so that an app-wide selector misses them."""
    labels = dict(template_labels)
    if track is Track.CANARY:
        for key in SELECTOR_LABELS:
            if key in labels:
                labels[key] = canary_value(labels[key])
    labels.update(selector(app, track))
    labels.setdefault("app.kubernetes.io/managed-by", MANAGED_BY)
    return labels


def canary_value(value: str) -> str:
    """The canary pods' value of an app-wide selector label whose stable value is ``value``: suffixed
    ``-canary``, still a valid label value. Always: a value that already ends so (an app named ``bird-canary``)
    would otherwise be stable's own, and the team's selectors on it would reach the canary's pods."""
    out = (value[: 63 - len("-canary")] + "-canary").strip("-_.")
    if out == value:  # 63 characters already ending so: cut one more, or it would be stable's value again
        out = (value[: 62 - len("-canary")] + "-canary").strip("-_.")
    return out


def state_configmap(app: str) -> str:
    return f"canary-{app}-state"


def requests_configmap(app: str) -> str:
    return f"canary-{app}-requests"


def journal_configmap(app: str, release: str, chunk: int) -> str:
    return f"canary-{app}-journal-{release.lower()}-{chunk}"


def lease(app: str) -> str:
    return f"canary-{app}"


#: Labels on the store's ConfigMaps, to list an app's journals.
STORE_KIND_LABEL = "canary.dev/store"
RELEASE_LABEL = "canary.dev/release"
