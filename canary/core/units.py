"""Value types shared by the spec: durations, image references, Kubernetes names.

Pure parsing and formatting; no I/O. Each parser raises ``ValueError`` whose
message is the rule that was broken, so the spec can report field, value and rule.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

_DURATION = re.compile(r"^(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?$")
_SECONDS = re.compile(r"^\d+(?:\.\d+)?$")
_DURATION_RULE = "must be a duration such as 30s, 1m, 1m30s or 2h (units h, m, s, ms; a bare number is seconds)"


#: the longest duration any field takes: a year and a day. Longer ones are typos, and overflow the
#: date arithmetic they go into (``now + holdLimit``, a backtest's ``-N`` hours) as tracebacks.
MAX_DURATION = timedelta(days=366)
_TOO_LONG = "must be at most 8784h (a year and a day)"


def parse_duration(value: object, allow_zero: bool = False) -> timedelta:
    """Parse Go/Prometheus-style durations ("1m", "1m30s", "500ms"); plain numbers are seconds, as numbers or text.
    Zero is refused in either spelling unless ``allow_zero``; more than ``MAX_DURATION`` always."""
    if isinstance(value, timedelta):
        return _bounded(value, allow_zero)
    if isinstance(value, bool):
        raise ValueError(_DURATION_RULE)
    if isinstance(value, int | float):
        # (an int is always finite, and one too large for a float overflowed math.isfinite: a traceback)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        if value < 0:
            raise ValueError(_negative(allow_zero))
        if value > MAX_DURATION.total_seconds():
            raise ValueError(_TOO_LONG)
        return _bounded(timedelta(seconds=value), allow_zero)
    if not isinstance(value, str):
        raise ValueError(_DURATION_RULE)
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(_negative(allow_zero))
    if len(text) > 40:
        # (Python refuses to read numbers of thousands of digits, naming its own limit: too long either way)
        raise ValueError(_TOO_LONG if _SECONDS.match(text) or _DURATION.match(text) else _DURATION_RULE)
    if _SECONDS.match(text):
        # "30" is what `pulumi config set` stores unless --path types it, and what a quoted 30 is: the
        # same 30 seconds as the number (a bare number means seconds)
        return parse_duration(float(text) if "." in text else int(text), allow_zero)
    match = _DURATION.match(text)
    if not text or match is None or not any(match.groupdict().values()):
        raise ValueError(_DURATION_RULE)
    parts = {k: int(v) for k, v in match.groupdict().items() if v}
    try:
        total = timedelta(hours=parts.get("h", 0), minutes=parts.get("m", 0), seconds=parts.get("s", 0), milliseconds=parts.get("ms", 0))
    except OverflowError:
        raise ValueError(_TOO_LONG) from None
    return _bounded(total, allow_zero)


def _negative(allow_zero: bool) -> str:
    return "must not be negative" if allow_zero else "must be greater than zero"


def _bounded(value: timedelta, allow_zero: bool) -> timedelta:
    if value < timedelta(0) or (value == timedelta(0) and not allow_zero):
        raise ValueError(_negative(allow_zero))
    if value > MAX_DURATION:
        raise ValueError(_TOO_LONG)
    return value


def format_duration(value: timedelta) -> str:
    """The shortest Prometheus range form of a duration: 1m, 1m30s, 500ms."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms % 1000:
        return f"{total_ms}ms"
    seconds = total_ms // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"


#: a DNS-1123 label, and each '.'-separated part of a DNS-1123 subdomain
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def check_dns_label(value: str, max_length: int = 63) -> str:
    """A DNS-1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric."""
    if not _LABEL.fullmatch(value):
        raise ValueError("must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit")
    if len(value) > max_length:
        raise ValueError(f"must be at most {max_length} characters")
    return value


def check_dns1035_label(value: str, max_length: int = 63) -> str:
    """A DNS-1035 label (a Service's name): a DNS-1123 label that starts with a letter."""
    check_dns_label(value, max_length)
    if not value[0].isalpha():
        raise ValueError("must be a DNS-1035 label (it names Services): lower-case letters, digits and '-', starting with a letter "
                         "and ending with a letter or digit")
    return value


def check_dns_subdomain(value: str) -> str:
    """A DNS-1123 subdomain (ConfigMap and Secret names): labels separated by '.', at most 253 characters."""
    if len(value) > 253 or not value or not all(_LABEL.fullmatch(p) for p in value.split(".")):
        raise ValueError("must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit")
    return value


#: the name part of a Kubernetes qualified name (a label key's, an appProtocol's), and a label value: at most 63 characters
_QUALIFIED_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")

QUALIFIED_NAME_RULE = ("an optional DNS-subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.', beginning and ending "
                       "with a letter or digit")


def is_qualified_name(value: str) -> bool:
    """A Kubernetes qualified name (label and annotation keys, a port's ``appProtocol``): an optional DNS-subdomain
    prefix and ``/``, then a name part."""
    prefix, slash, name = value.rpartition("/")
    if slash:
        try:
            check_dns_subdomain(prefix)
        except ValueError:
            return False
    return _QUALIFIED_PART.fullmatch(name) is not None


def is_label_value(value: str) -> bool:
    """A label's value: empty, or a qualified name's name part."""
    return not value or _QUALIFIED_PART.fullmatch(value) is not None


def check_app_protocol(value: str) -> str:
    """A Service port's ``appProtocol`` as the API server takes it (a qualified name): an IANA service name
    (``http``, ``https``), or a DNS-subdomain prefix, ``/`` and a name (``kubernetes.io/h2c``, ``example.com/proto``)."""
    if not is_qualified_name(value):
        raise ValueError("must be an application protocol as Kubernetes takes it: an IANA service name (http, https) or a "
                         "DNS-subdomain prefix and '/' then a name (kubernetes.io/h2c, kubernetes.io/ws, kubernetes.io/wss), the name "
                         "at most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit")
    return value


def check_hostname(value: str) -> str:
    """A DNS-1123 subdomain, optionally with a leading wildcard label as Gateway API allows."""
    host = value[2:] if value.startswith("*.") else value
    if len(value) > 253 or not host or not all(_LABEL.fullmatch(p) for p in host.split(".")):
        raise ValueError("must be a DNS-1123 hostname (lower-case labels separated by '.', optional leading '*.')")
    return value


# A simplified form of the distribution reference grammar: [domain[:port]/]path[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?"
_IMAGE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)


def check_image(value: str) -> str:
    """An image reference that names a tag or a digest (an implicit :latest cannot be rolled back to)."""
    match = _IMAGE.fullmatch(value)
    if match is None or len(value) > 255:
        raise ValueError("must be an image reference such as registry.example.com/team/web:1.4.2 or web@sha256:<64 hex>")
    domain = match.group("domain")
    # "web:1.0/x" would otherwise read "web:1.0" as a registry; a registry has a dot, a port or is localhost.
    bare_domain = bool(domain) and "." not in domain and ":" not in domain and domain != "localhost"
    if bare_domain and (not _IMAGE.fullmatch(value.split("/", 1)[1]) or domain != domain.lower()):
        raise ValueError("must be an image reference such as registry.example.com/team/web:1.4.2")
    if not match.group("tag") and not match.group("digest"):
        raise ValueError("must name a tag or a digest (an untagged image means :latest, which cannot be rolled back to)")
    return value


def image_tag(value: str) -> str:
    """The tag of an image reference, or its digest's short form, for labels and logs."""
    match = _IMAGE.match(value)
    if match is None:
        return ""
    return match.group("tag") or (match.group("digest") or "")[7:19]


_QUANTITY = re.compile(r"^[0-9]+(?:\.[0-9]+)?(?:m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$")


_SUFFIX = {"m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60}


def quantity_value(value: object) -> float:
    """The number a Kubernetes quantity stands for (``100m`` is 0.1, ``1Ki`` is 1024), to compare two of them."""
    text = check_quantity(value)
    number = re.match(r"^[0-9]+(?:\.[0-9]+)?", text)
    assert number is not None  # check_quantity matched
    suffix = text[number.end():]
    try:
        # (an exponent of thousands of digits is too large too: Python would refuse to read it, naming its own limit)
        scale = (10.0 ** int(suffix[1:]) if len(suffix) < 12 else math.inf) if suffix.startswith("e") else _SUFFIX[suffix]
        value = float(number.group(0)) * scale
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ValueError("is too large for a Kubernetes quantity")
    return value


def check_quantity(value: object) -> str:
    """A Kubernetes resource quantity: 100m, 0.5, 128Mi, 1G."""
    text = str(value)
    if isinstance(value, bool) or not _QUANTITY.match(text):
        raise ValueError("must be a Kubernetes quantity such as 100m, 0.5, 128Mi or 1Gi")
    return text
