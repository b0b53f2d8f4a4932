"""Chat notifications: the message bodies Slack, Microsoft Teams and Discord webhooks take. Pure.

The shapes follow Flagger's alert providers, so a team's existing channels and
dashboards read them the same way: Slack's attachment with a colour and fields,
Discord's Slack-compatible endpoint (the webhook URL with ``/slack``), and
Teams' MessageCard. ``admits`` is the severity filter: an alert of severity
``info`` gets everything, ``warn`` warnings and errors, ``error`` errors only.
"""

from __future__ import annotations

from typing import Any

from canary.core.records import ReleaseState
from canary.core.spec import Alert, AlertType, ReleaseSpec, Severity

_ORDER = [Severity.INFO, Severity.WARN, Severity.ERROR]


def admits(threshold: Severity, severity: Severity) -> bool:
    return _ORDER.index(severity) >= _ORDER.index(threshold)


def _fields(spec: ReleaseSpec, state: ReleaseState) -> list[tuple[str, str]]:
    fields = [("Target", f"Deployment/{spec.app.name}.{spec.app.namespace}"), ("Phase", state.phase.value), ("Weight", str(state.weight))]
    if state.canary is not None:
        fields.append(("Canary", state.canary.image or state.canary.hash))
    if state.stable is not None:
        fields.append(("Stable", state.stable.image or state.stable.hash))
    fields.append(("Release", state.release))
    return fields


def message(alert: Alert, spec: ReleaseSpec, state: ReleaseState, text: str, severity: Severity) -> dict[str, Any]:
    """The JSON body to POST for ``alert``."""
    title = f"{spec.app.name}.{spec.app.namespace}"
    fields = _fields(spec, state)
    if alert.type is AlertType.MSTEAMS:
        return {
            "@type": "MessageCard",
            "@context": "http://schema.org/extensions",
            "themeColor": {Severity.ERROR: "FF0000", Severity.WARN: "FFA500"}.get(severity, "0076D7"),
            "summary": title,
            "sections": [{"activityTitle": text, "activitySubtitle": title, "facts": [{"name": k, "value": v} for k, v in fields]}],
        }
    body: dict[str, Any] = {
        "username": alert.username,
        "icon_emoji": ":rocket:",
        "attachments": [{
            "color": {Severity.ERROR: "danger", Severity.WARN: "warning"}.get(severity, "good"),
            "author_name": title,
            "text": text,
            "mrkdwn_in": ["text"],
            "fields": [{"title": k, "value": v, "short": k not in ("Target", "Release")} for k, v in fields],
        }],
    }
    if alert.channel:
        body["channel"] = alert.channel
    return body


def address(alert: Alert) -> str:
    """Where to POST: Discord takes Slack's format at its webhook URL's path plus ``/slack``, its query
    (``?thread_id=``) and fragment kept after it (appended to the whole URL, it landed in the query)."""
    url = alert.url.get_secret_value()
    if alert.type is not AlertType.DISCORD:
        return url
    rest, hash_, fragment = url.partition("#")
    path, query_, query = rest.partition("?")
    path = path.rstrip("/")
    return f"{path if path.endswith('/slack') else path + '/slack'}{query_}{query}{hash_}{fragment}"
