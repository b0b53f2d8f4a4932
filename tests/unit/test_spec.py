"""The spec (canary.core.spec) and the config shapes it loads from (canary.core.config).

Valid stacks load; every invalid input is refused naming the field, the rule and the value, all
problems at once; secret values never appear in a message.
"""

from __future__ import annotations

import copy
import json
import traceback
from datetime import timedelta
from typing import Any

import pytest
from pulumi.automation import ConfigValue
from pydantic import ValidationError

from canary.adapters import stackfile
from canary.core import config as stackconfig
from canary.core.spec import NoDataPolicy, Strategy, WebhookType, parse_spec, parse_stack
from canary.errors import InvalidSpec
from tests.conftest import ROOT, base_values
from tests.helpers import BASE_IMAGE, chain, del_path, pod_template, problems, set_path, spec_with, update, values_with

IMAGE_2 = "registry.example.com/shop/web:2.0.0"
NO_LONGER = "is no longer stack config"


def _no_weights() -> Any:
    return chain(del_path("analysis.stepWeight"), del_path("analysis.maxWeight"))


def _template(**container: Any) -> Any:
    """Describe the app with a full pod template (and no simple-form fields)."""
    return set_path("app.template", pod_template(**container))


def _apps(name: str = "web", key: str = "web") -> Any:
    """Move the single app to the multi-app form ``apps: {key: ...}``."""

    def mutate(values: dict[str, Any]) -> None:
        app = {**values.pop("app"), "name": name, "image": values.pop("stableImage")}
        values["apps"] = {key: {"app": app, "gateway": values.pop("gateway"), "analysis": values.pop("analysis")}}

    return mutate


# (case id, mutation, field named, fragment of the rule, fragment of the value shown)
INVALID = [
    # --- keys of earlier versions: the weight cases of 0.1 are refusals now
    ("weight-above-100", chain(set_path("canaryImage", IMAGE_2), set_path("canaryWeight", 101)), "canaryWeight", NO_LONGER, "101"),
    ("weight-negative", set_path("canaryWeight", -1), "canaryWeight", NO_LONGER, "-1"),
    ("weight-without-canary-image", set_path("canaryWeight", 20), "canaryWeight", NO_LONGER, "20"),
    ("canary-image", set_path("canaryImage", "web:"), "canaryImage", "see canary status", "web:"),
    # --- weights and steps
    ("step-weight-zero", set_path("analysis.stepWeight", 0), "analysis.stepWeight", "greater than or equal to 1", "0"),
    ("max-weight-above-100", set_path("analysis.maxWeight", 150), "analysis.maxWeight", "less than or equal to 100", "150"),
    ("step-above-max", update("analysis", stepWeight=60, maxWeight=50), "analysis", "stepWeight (60) must not exceed maxWeight (50)", "a mapping of interval"),
    ("step-weights-not-increasing", chain(_no_weights(), set_path("analysis.stepWeights", [10, 5, 20])), "analysis.stepWeights", "strictly increasing (10 is followed by 5)", "[10, 5, 20]"),
    ("step-weights-and-step-weight", set_path("analysis.stepWeights", [5, 10]), "analysis", "either stepWeights or stepWeight", "stepWeights"),
    ("step-weights-out-of-range", chain(_no_weights(), set_path("analysis.stepWeights", [10, 120])), "analysis.stepWeights[1]", "less than or equal to 100", "120"),
    ("step-weights-empty", chain(_no_weights(), set_path("analysis.stepWeights", [])), "analysis.stepWeights", "at least one weight", "[]"),
    ("no-steps", _no_weights(), "analysis", "must set stepWeight", "a mapping of interval"),
    # --- durations and counts
    ("interval-unparseable", set_path("analysis.interval", "abc"), "analysis.interval", "must be a duration", "'abc'"),
    ("interval-too-short", set_path("analysis.interval", "100ms"), "analysis.interval", "at least 1s", "'100ms'"),
    ("metric-interval-too-short", set_path("analysis.metrics.1.interval", "500ms"), "analysis.metrics[1].interval", "at least 1s", "'500ms'"),
    ("threshold-zero", set_path("analysis.threshold", 0), "analysis.threshold", "greater than or equal to 1", "0"),
    ("failure-limit-zero", set_path("analysis.failureLimit", 0), "analysis.failureLimit", "greater than or equal to 1", "0"),
    ("failure-limit-too-high", set_path("analysis.failureLimit", 1001), "analysis.failureLimit", "less than or equal to 1000", "1001"),
    ("warmup-unparseable", set_path("analysis.warmup", "soon"), "analysis.warmup", "must be a duration", "'soon'"),
    ("hold-limit-negative", set_path("analysis.holdLimit", "-1m"), "analysis.holdLimit", "greater than zero", "'-1m'"),
    ("confidence-too-low", set_path("analysis.confidence", 0.3), "analysis.confidence", "greater than or equal to 0.5", "0.3"),
    ("confidence-certain", set_path("analysis.confidence", 1), "analysis.confidence", "less than or equal to 0.9999", "1"),
    ("decision-timeout-unparseable", set_path("analysis.decisionTimeout", "1 day"), "analysis.decisionTimeout", "must be a duration", "'1 day'"),
    ("min-requests-zero", set_path("analysis.minRequests", 0), "analysis.minRequests", "greater than or equal to 1", "0"),
    # --- metrics and templates
    ("threshold-min-above-max", set_path("analysis.metrics.1.thresholdRange", {"min": 10, "max": 1}), "analysis.metrics[1].thresholdRange", "min (10) must not be greater than max (1)", "a mapping of min, max"),
    ("threshold-empty", set_path("analysis.metrics.1.thresholdRange", {}), "analysis.metrics[1].thresholdRange", "must set min, max or both", "a mapping of nothing"),
    ("threshold-infinite", set_path("analysis.metrics.1.thresholdRange", {"max": float("inf")}), "analysis.metrics[1].thresholdRange", "max must be a finite number", "a mapping of max"),
    ("unknown-template-ref", set_path("analysis.metrics.0.templateRef", {"name": "latency"}), "analysis.metrics[0].templateRef.name", "must name a metricTemplates entry (error-rate)", "latency"),
    ("template-unknown-placeholder", set_path("metricTemplates.error-rate.query", "sum(x{pod='{{ pod }}'})"), "metricTemplates.error-rate.query", "unknown placeholder {{ pod }}", "sum(x{pod="),
    ("template-variable-undefined", set_path("analysis.metrics.0.templateVariables", {}), "analysis.metrics[0].templateVariables", "must define le used by template error-rate", "{}"),
    ("template-unbalanced", set_path("metricTemplates.error-rate.query", "sum(rate(x[1m])"), "metricTemplates.error-rate.query", "unclosed '('", "'sum(rate(x[1m])'"),
    ("template-unclosed-placeholder", set_path("metricTemplates.error-rate.query", "sum(x{pod=~'{{ target'})"), "metricTemplates.error-rate.query", "unclosed '{{'", "{{ target"),
    ("template-provider-not-prometheus", set_path("metricTemplates.error-rate.provider.type", "datadog"), "metricTemplates.error-rate.provider.type", "'prometheus'", "'datadog'"),
    ("unknown-builtin", set_path("analysis.metrics.1.name", "latency"), "analysis.metrics[1].name", "names no built-in metric", "latency"),
    ("builtin-with-variables", set_path("analysis.metrics.1.templateVariables", {"q": "1"}), "analysis.metrics[1].templateVariables", "built-in metrics take no variables", "{'q': '1'}"),
    ("duplicate-metric", set_path("analysis.metrics.1", {"name": "error-rate", "templateRef": {"name": "error-rate"}, "thresholdRange": {"max": 1}, "templateVariables": {"le": "1"}}), "analysis.metrics[1].name", "must be unique", "error-rate"),
    ("metric-not-judged", del_path("analysis.metrics.1.thresholdRange"), "analysis.metrics[1]", "must set thresholdRange, compare or judge", "a mapping of name"),
    ("no-data-policy-unknown", set_path("analysis.metrics.1.onNoData", "ignore"), "analysis.metrics[1].onNoData", "'fail', 'hold' or 'pass'", "'ignore'"),
    ("evidence-unknown", set_path("analysis.metrics.1.evidence", "strong"), "analysis.metrics[1].evidence", "'auto', 'rate' or 'none'", "'strong'"),
    ("compare-by-unknown", set_path("analysis.metrics.1.compare", {"by": "quotient", "thresholdRange": {"max": 1.2}}), "analysis.metrics[1].compare.by", "'difference' or 'ratio'", "'quotient'"),
    ("compare-to-canary", set_path("analysis.metrics.1.compare", {"to": "canary", "thresholdRange": {"max": 1.2}}), "analysis.metrics[1].compare.to", "'stable'", "'canary'"),
    ("compare-without-range", set_path("analysis.metrics.1.compare", {"by": "ratio"}), "analysis.metrics[1].compare.thresholdRange", "is required", "nothing"),
    ("ratio-of-a-rate-without-range", set_path("analysis.metrics.1", {"name": "request-error-rate", "compare": {"by": "ratio", "thresholdRange": {"max": 1.5}}}),
     "analysis.metrics[1].compare.by", "needs thresholdRange as well: at 0 % on both tracks", "ratio"),
    ("judge-confidence-certain", set_path("analysis.metrics.1.judge", {"confidence": 1.5}), "analysis.metrics[1].judge.confidence", "less than 1", "1.5"),
    ("judge-too-few-samples", set_path("analysis.metrics.1.judge", {"minSamples": 2}), "analysis.metrics[1].judge.minSamples", "greater than or equal to 3", "2"),
    ("judge-decrease-above-one", set_path("analysis.metrics.1.judge", {"allowedDecrease": 1.5}), "analysis.metrics[1].judge.allowedDecrease", "less than or equal to 1", "1.5"),
    ("judge-test-unknown", set_path("analysis.metrics.1.judge", {"test": "t-test"}), "analysis.metrics[1].judge.test", "'mann-whitney'", "'t-test'"),
    # a rate passes only on enough requests: judge alone has no range for the bound
    ("rate-judged-by-judge-alone", set_path("analysis.metrics.1", {"name": "request-error-rate", "judge": {}}), "analysis.metrics[1]",
     "is a share of the canary's requests, which passes only on enough requests (evidence), and judge alone gives no range", "request-error-rate judged by judge alone"),
    ("explicit-rate-judged-by-judge-alone", chain(del_path("analysis.metrics.0.thresholdRange"), set_path("analysis.metrics.0.judge", {}), set_path("analysis.metrics.0.evidence", "rate")),
     "analysis.metrics[0]", "add thresholdRange or compare, or set evidence: none", "error-rate judged by judge alone"),
    # a tolerance of 1 or more can never find a shift: the interval's near end never lies beyond the shift
    ("judge-tolerance-one", set_path("analysis.metrics.1.judge", {"tolerance": 1}), "analysis.metrics[1].judge.tolerance", "must be below 1", "1"),
    ("judge-tolerance-negative", set_path("analysis.metrics.1.judge", {"tolerance": -0.1}), "analysis.metrics[1].judge.tolerance", "greater than or equal to 0", "-0.1"),
    # the window must hold minSamples samples at the step, and no more points than Prometheus returns
    ("judge-window-too-few-samples", chain(set_path("analysis.interval", "30s"), set_path("analysis.metrics.1.judge", {"step": "5s"}), set_path("prometheus.scrapeInterval", "1s")),
     "analysis.metrics[1].judge.step", "gives 7 samples over the window of 30s (analysis.interval), fewer than judge.minSamples 10: the judge could never "
     "reach a verdict; use analysis.interval (the judge's window) of at least 45s or a step of at most 3333ms or minSamples of at most 7", "5s"),
    ("judge-metric-window-too-few-samples", chain(set_path("analysis.metrics.1.interval", "2m"), set_path("analysis.metrics.1.judge", {"step": "1m", "minSamples": 4})),
     "analysis.metrics[1].judge.step", "gives 3 samples over the window of 2m (analysis.metrics[1].interval), fewer than judge.minSamples 4", "1m"),
    ("judge-window-too-many-points", chain(set_path("analysis.metrics.1.interval", "24h"), set_path("analysis.metrics.1.judge", {"step": "5s"}), set_path("prometheus.scrapeInterval", "1s")),
     "analysis.metrics[1].judge.step",
     "gives 17281 samples over the window of 24h (analysis.metrics[1].interval), more than the 11000 points Prometheus returns: use a step of at least 8s", "5s"),
    # each judge sample is a rate over one step: over fewer than two scrapes it is empty
    ("judge-step-within-two-scrapes", set_path("analysis.metrics.1.judge", {"step": "5s"}), "analysis.metrics[1].judge.step",
     "is shorter than twice the scrape interval, 15s (prometheus.scrapeInterval, unset: 15s): each of the judge's samples is a rate over one step, "
     "and a rate over fewer than two scrapes is empty; use a step of at least 30s, and then analysis.interval (the judge's window, now 1m) of at "
     "least 4m30s for judge.minSamples 10 (or minSamples of at most 3)", "5s"),
    # unset, the step is twice the scrape interval (30s): a minute holds 3 samples of it, and the window is what to set
    ("judge-default-step-window-too-short", set_path("analysis.metrics.1.judge", {}), "analysis.metrics[1].judge.step",
     "gives 3 samples over the window of 1m (analysis.interval), fewer than judge.minSamples 10: the judge could never reach a verdict; "
     "use analysis.interval (the judge's window) of at least 4m30s or minSamples of at most 3", "unset: 30s, twice the scrape interval"),
    ("judge-step-within-two-pod-monitor-scrapes", chain(set_path("prometheus.podMonitor", {"interval": "10s"}), set_path("analysis.metrics.1.judge", {"step": "15s", "minSamples": 3})),
     "analysis.metrics[1].judge.step", "is shorter than twice the scrape interval, 10s (prometheus.podMonitor.interval): each of the judge's samples", "15s"),
    ("scrape-interval-unlike-the-pod-monitor-s", chain(set_path("prometheus.podMonitor", {"interval": "10s"}), set_path("prometheus.scrapeInterval", "15s")),
     "prometheus.scrapeInterval", "differs from podMonitor.interval (10s), which is how often Prometheus scrapes the pods", "15s"),
    ("inconclusive-range-inside-threshold", set_path("analysis.metrics.1.inconclusiveRange", {"max": 300}), "analysis.metrics[1]", "inconclusiveRange max 300 must contain thresholdRange max 500", "a mapping of name"),
    ("inconclusive-range-other-side", set_path("analysis.metrics.1.inconclusiveRange", {"min": 0}), "analysis.metrics[1]", "must contain thresholdRange max 500", "inconclusiveRange"),
    ("inconclusive-range-without-threshold", chain(del_path("analysis.metrics.1.thresholdRange"), set_path("analysis.metrics.1.compare", {"thresholdRange": {"max": 50}}), set_path("analysis.metrics.1.inconclusiveRange", {"max": 800})), "analysis.metrics[1]", "inconclusiveRange needs a thresholdRange", "compare"),
    ("dry-run-not-boolean", set_path("analysis.metrics.1.dryRun", "maybe"), "analysis.metrics[1].dryRun", "valid boolean", "'maybe'"),
    ("metric-weight-zero", set_path("analysis.metrics.1.weight", 0), "analysis.metrics[1].weight", "greater than 0", "0"),
    ("metric-weight-above-100", set_path("analysis.metrics.1.weight", 101), "analysis.metrics[1].weight", "less than or equal to 100", "101"),
    ("score-marginal-above-pass", set_path("analysis.score", {"pass": 70, "marginal": 80}), "analysis.score", "marginal (80) must not exceed pass (70)", "a mapping of pass, marginal"),
    ("score-above-100", set_path("analysis.score", {"pass": 120}), "analysis.score.pass", "less than or equal to 100", "120"),
    ("score-without-metrics", chain(set_path("analysis.metrics", []), set_path("analysis.score", {})), "analysis.score", "needs metrics to score", "set"),
    # a score over metrics none of which is acted on was 100: every tick passed (a review's finding)
    # a variable's value is text inside the template's quotes: a quote ended the string, and the rest was PromQL
    ("template-variable-ends-its-string", set_path("analysis.metrics.0.templateVariables.le", '0.5"}[1m])) * 0 #'),
     "analysis.metrics[0].templateVariables.le", 'contains an unescaped ", which would end the quoted string', "'0.5\"}[1m])) * 0 #'"),
    ("template-variable-other-quote-escaped", set_path("analysis.metrics.0.templateVariables.le", "it\\'s"),
     "analysis.metrics[0].templateVariables.le", "which is no escape in a PromQL string in \" quotes", "it"),
    ("template-variable-line-break", set_path("analysis.metrics.0.templateVariables.le", "a\nb"),
     "analysis.metrics[0].templateVariables.le", "contains a line break", "'a\\nb'"),
    ("template-variable-bad-escape", set_path("analysis.metrics.0.templateVariables.le", "/api/\\d+"),
     "analysis.metrics[0].templateVariables.le", "contains \\d, which is no escape in a PromQL string", "'/api/\\\\d+'"),
    ("score-of-dry-runs-only", chain(set_path("analysis.metrics.0.dryRun", True), set_path("analysis.metrics.1.dryRun", True), set_path("analysis.score", {})),
     "analysis.score", "needs a metric that is not dryRun", "set"),
    # nothing acts on a tick: "all 0 checks passed" promoted a canary at 50 % errors
    ("dry-runs-only", chain(set_path("analysis.metrics.0.dryRun", True), set_path("analysis.metrics.1.dryRun", True), set_path("analysis.webhooks", [])),
     "analysis.metrics", "needs a metric that is not dryRun (or a rollout webhook)", "2 dryRun"),
    ("critical-dry-run", chain(set_path("analysis.metrics.0.dryRun", True), set_path("analysis.metrics.0.critical", True)), "analysis.metrics[0]",
     "is critical and dryRun", "a mapping of name, templateRef, thresholdRange, templateVariables, dryRun, critical"),
    ("judge-increase-infinite", set_path("analysis.metrics.1.judge", {"allowedIncrease": float("inf")}), "analysis.metrics[1].judge.allowedIncrease",
     "finite number", "inf"),
    # --- strategies
    ("iterations-with-step-weight", set_path("analysis.iterations", 5), "analysis", "set iterations (A/B testing or blue/green) or weights", "iterations"),
    ("match-without-iterations", set_path("analysis.match", [{"headers": {"x-canary": {"exact": "insider"}}}]), "analysis", "match (A/B testing) needs iterations", "match"),
    ("strategy-ab-without-match", chain(_no_weights(), update("analysis", strategy="ab", iterations=5)), "analysis", "strategy ab needs match", "strategy"),
    ("strategy-ab-without-iterations", chain(_no_weights(), update("analysis", strategy="ab", match=[{"headers": {"x": {"exact": "1"}}}])), "analysis", "strategy ab needs iterations", "match"),
    ("strategy-canary-with-iterations", chain(_no_weights(), update("analysis", strategy="canary", iterations=5)), "analysis", "strategy canary steps through weights", "iterations"),
    ("strategy-unknown", set_path("analysis.strategy", "rolling"), "analysis.strategy", "'canary', 'ab' or 'blueGreen'", "'rolling'"),
    ("session-affinity-with-iterations", chain(_no_weights(), update("analysis", iterations=5, sessionAffinity={})), "analysis", "sessionAffinity needs weighted steps", "sessionAffinity"),
    ("session-affinity-bad-cookie", set_path("analysis.sessionAffinity", {"cookieName": "my cookie"}), "analysis.sessionAffinity.cookieName", "must be a cookie name", "'my cookie'"),
    ("mirror-weight-without-mirror", set_path("analysis.mirrorWeight", 20), "analysis.mirrorWeight", "needs mirror: true", "20"),
    ("mirror-with-ab", chain(_no_weights(), update("analysis", iterations=5, mirror=True, match=[{"headers": {"x": {"exact": "1"}}}])), "analysis.mirror", "A/B testing routes matched requests instead", "true"),
    ("match-empty", chain(_no_weights(), update("analysis", iterations=5, match=[{}])), "analysis.match[0]", "at least one header or query parameter", "a mapping of nothing"),
    ("match-prefix", chain(_no_weights(), update("analysis", iterations=5, match=[{"headers": {"x": {"prefix": "a"}}}])), "analysis.match[0].headers.x.prefix", "is not a known field", "'a'"),
    ("match-both", chain(_no_weights(), update("analysis", iterations=5, match=[{"headers": {"x": {"exact": "a", "regex": "b"}}}])), "analysis.match[0].headers.x", "exactly one of exact or regex", "a mapping of exact, regex"),
    ("match-bad-regex", chain(_no_weights(), update("analysis", iterations=5, match=[{"queryParams": {"beta": {"regex": "(["}}}])), "analysis.match[0].queryParams.beta", "does not compile", "a mapping of regex"),
    ("match-bad-header", chain(_no_weights(), update("analysis", iterations=5, match=[{"headers": {"x canary": {"exact": "1"}}}])), "analysis.match[0]", "header name 'x canary'", "a mapping of headers"),
    # --- webhooks and alerts
    ("webhook-no-target", set_path("analysis.webhooks.0", {"name": "x", "type": "rollout"}), "analysis.webhooks[0]", "exactly one of url", "a mapping of name, type"),
    ("webhook-both-targets", set_path("analysis.webhooks.0", {"name": "x", "type": "rollout", "url": "http://a/", "cmd": "true"}), "analysis.webhooks[0]", "exactly one of url", "a mapping of name, type, url, cmd"),
    ("webhook-negative-timeout", set_path("analysis.webhooks.0.timeout", "-5s"), "analysis.webhooks[0].timeout", "greater than zero", "'-5s'"),
    ("webhook-timeout-too-long", set_path("analysis.webhooks.0.timeout", "2h"), "analysis.webhooks[0].timeout", "at most 1h", "'2h'"),
    ("webhook-unknown-type", set_path("analysis.webhooks.0.type", "pre-promotion"), "analysis.webhooks[0].type", "'confirm-rollout'", "'pre-promotion'"),
    ("webhook-bad-url", set_path("analysis.webhooks.0", {"name": "x", "type": "event", "url": "ftp://x"}), "analysis.webhooks[0].url", "http:// or https:// URL", "'ftp://x'"),
    ("duplicate-webhook", set_path("analysis.webhooks", [{"name": "a", "type": "event", "cmd": "true"}, {"name": "a", "type": "rollout", "cmd": "true"}]), "analysis.webhooks[1].name", "must be unique", "a"),
    ("alert-bad-url", set_path("analysis.alerts", [{"name": "chat", "type": "slack", "url": "ftp://chat.example.com/hook"}]), "analysis.alerts[0].url", "http:// or https:// URL", "<secret>"),
    ("alert-unknown-type", set_path("analysis.alerts", [{"name": "chat", "type": "irc", "url": "https://x"}]), "analysis.alerts[0].type", "'slack', 'msteams' or 'discord'", "'irc'"),
    ("alert-unknown-severity", set_path("analysis.alerts", [{"name": "chat", "type": "slack", "url": "https://x", "severity": "debug"}]), "analysis.alerts[0].severity", "'info', 'warn' or 'error'", "'debug'"),
    # --- the app
    ("bad-stable-image", set_path("stableImage", "Web App:1.0"), "stableImage", "must be an image reference", "'Web App:1.0'"),
    ("untagged-stable-image", set_path("stableImage", "registry.example.com/web"), "stableImage", "must name a tag or a digest", "'registry.example.com/web'"),
    ("bad-app-image", chain(del_path("stableImage"), set_path("app.image", "web@sha256:abc")), "app.image", "must be an image reference", "'web@sha256:abc'"),
    ("stable-image-differs-from-app-image", set_path("app.image", IMAGE_2), "stableImage", f"is the earlier name of app.image and differs from it ({IMAGE_2})", BASE_IMAGE),
    ("no-image", del_path("stableImage"), "app.image", "is required: the image the app runs", "nothing"),
    ("app-name-not-dns", set_path("app.name", "Web_App"), "app.name", "DNS-1123 label", "'Web_App'"),
    ("app-name-too-long", set_path("app.name", "a" * 57), "app.name", "at most 56 characters", "'aaaa"),
    ("namespace-not-dns", set_path("app.namespace", "-prod"), "app.namespace", "DNS-1123 label", "'-prod'"),
    ("wrong-type", set_path("app.replicas", "two"), "app.replicas", "valid integer", "'two'"),
    ("replicas-zero", set_path("app.replicas", 0), "app.replicas", "greater than or equal to 1", "0"),
    ("canary-replicas-zero", set_path("app.canaryReplicas", 0), "app.canaryReplicas", "greater than or equal to 1", "0"),
    ("port-out-of-range", set_path("app.port", 70000), "app.port", "less than or equal to 65535", "70000"),
    ("bad-quantity", set_path("app.resources", {"requests": {"cpu": "lots"}}), "app.resources.requests.cpu", "Kubernetes quantity", "'lots'"),
    ("quantity-exponent-of-thousands-of-digits", set_path("app.resources", {"requests": {"memory": "1e" + "9" * 5000}, "limits": {"memory": "1Gi"}}),
     "app.resources", "too large for a Kubernetes quantity", "a mapping of requests, limits"),
    ("request-above-limit", set_path("app.resources", {"requests": {"memory": "2Gi"}, "limits": {"memory": "1500Mi"}}), "app.resources",
     "requests.memory 2Gi must not be above limits.memory 1500Mi", "a mapping of"),
    ("unknown-resource", set_path("app.resources", {"requests": {"gpu": "1"}}), "app.resources.requests.gpu[key]", "'cpu', 'memory' or 'ephemeral-storage'", "'gpu'"),
    ("probe-relative-path", set_path("app.probes", {"readiness": {"path": "healthz"}}), "app.probes.readiness.path", "absolute HTTP path", "'healthz'"),
    ("env-name-invalid", set_path("app.env", {"1BAD": "x"}), "app.env", "variable name '1BAD'", "a mapping of 1BAD"),
    ("config-map-name-not-dns", chain(_template(), set_path("app.configMaps", {"Settings": {"data": {"a": "b"}}})), "app.configMaps.Settings[key]", "DNS-1123 subdomain", "'Settings'"),
    # its copy is named <name>-<10 hex>: a name the API server refused at the up, after validate had passed
    ("config-map-name-too-long-to-copy", chain(_template(), set_path("app.configMaps", {"s" * 243: {"data": {"a": "b"}}})), f"app.configMaps.{'s' * 243}[key]",
     "must be at most 242 characters (243 given): its copy is named <name>-<10 hex of its content>", "'sssss"),
    # --- autoscaler and disruption budget
    ("autoscaler-min-above-max", set_path("app.autoscaler", {"minReplicas": 5, "maxReplicas": 2}), "app.autoscaler", "minReplicas (5) must not exceed maxReplicas (2)", "a mapping of minReplicas, maxReplicas"),
    ("autoscaler-without-max", set_path("app.autoscaler", {"minReplicas": 2}), "app.autoscaler.maxReplicas", "is required", "nothing"),
    ("autoscaler-with-replicas", set_path("app.autoscaler", {"maxReplicas": 6}), "app.replicas", "must not be set with an autoscaler", "2"),
    ("autoscaler-metric-typo", chain(del_path("app.replicas"), set_path("app.autoscaler", {"maxReplicas": 6, "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilisation": 60}}}]})),
     "app.autoscaler.metrics[0].resource.target.averageUtilisation", "is not a field of MetricTarget (did you mean averageUtilization?)", "60"),
    ("autoscaler-metric-without-type", chain(del_path("app.replicas"), set_path("app.autoscaler", {"maxReplicas": 6, "metrics": [{"resource": {"name": "cpu", "target": {"type": "Utilization"}}}]})),
     "app.autoscaler.metrics[0].type", "is required", "nothing"),
    ("autoscaler-behavior-wrong-type", chain(del_path("app.replicas"), set_path("app.autoscaler", {"maxReplicas": 6, "behavior": {"scaleDown": {"stabilizationWindowSeconds": "5m"}}})),
     "app.autoscaler.behavior.scaleDown.stabilizationWindowSeconds", "must be an integer", "'5m'"),
    ("disruption-budget-both", set_path("app.disruptionBudget", {"minAvailable": 1, "maxUnavailable": 1}), "app.disruptionBudget", "exactly one of minAvailable or maxUnavailable", "a mapping of minAvailable, maxUnavailable"),
    ("disruption-budget-neither", set_path("app.disruptionBudget", {}), "app.disruptionBudget", "exactly one of minAvailable or maxUnavailable", "a mapping of nothing"),
    ("disruption-budget-bad-percentage", set_path("app.disruptionBudget", {"maxUnavailable": "half"}), "app.disruptionBudget", "'half' must be a count or a percentage such as 50%", "a mapping of maxUnavailable"),
    ("disruption-budget-long-percentage", set_path("app.disruptionBudget", {"minAvailable": "1000%"}), "app.disruptionBudget", "'1000%' must be a count or a percentage", "a mapping of minAvailable"),
    # --- the pod template, checked against the Kubernetes schema
    ("template-unknown-field", _template(lifecycleHooks={}), "app.template.spec.containers[0].lifecycleHooks", "is not a field of Container", "a mapping of nothing"),
    ("template-typo", _template(imagePullPolicy="Always", volumeMount=[]), "app.template.spec.containers[0].volumeMount", "is not a field of Container (did you mean volumeMounts?)", "[]"),
    ("template-case-typo", set_path("app.template", {"spec": {"containers": [{"name": "web", "image": BASE_IMAGE}], "nodeselector": {"disk": "ssd"}}}), "app.template.spec.nodeselector", "(did you mean nodeSelector?)", "a mapping of disk"),
    ("template-wrong-type", _template(ports=[{"containerPort": "8080"}]), "app.template.spec.containers[0].ports[0].containerPort", "must be an integer", "'8080'"),
    ("template-wrong-map-value", set_path("app.template", {"metadata": {"labels": {"tier": 1}}, "spec": {"containers": [{"name": "web", "image": BASE_IMAGE}]}}), "app.template.metadata.labels.tier", "must be a string", "1"),
    ("template-missing-container-name", set_path("app.template", {"spec": {"containers": [{"image": BASE_IMAGE}]}}), "app.template.spec.containers[0].name", "is required", "nothing"),
    ("template-no-containers", set_path("app.template", {"spec": {"containers": []}}), "app.template.spec.containers", "must list at least one container", "web"),
    ("template-spec-not-a-mapping", set_path("app.template", {"spec": ["web"]}), "app.template.spec", "must be a mapping", "['web']"),
    ("template-containers-not-a-list", set_path("app.template", {"spec": {"containers": {"web": {"image": BASE_IMAGE}}}}), "app.template.spec.containers", "must be a list", "a mapping of web"),
    ("template-volume-source-not-a-mapping", set_path("app.template", {"spec": {"containers": [{"name": "web", "image": BASE_IMAGE}], "volumes": [{"name": "v", "configMap": "settings"}]}}),
     "app.template.spec.volumes[0].configMap", "must be a mapping", "'settings'"),
    ("template-and-simple-form", chain(_template(), set_path("app.env", {"A": "b"})), "app.env", "either with template or with env/resources/probes", "set"),
    ("template-container-not-found", chain(_template(), set_path("app.container", "sidecar")), "app.container", "names no container of the template", "sidecar"),
    ("template-without-image", chain(del_path("stableImage"), set_path("app.template", {"spec": {"containers": [{"name": "web"}]}})), "app.image", "the template's main container web has no image", "nothing"),
    ("template-untagged-image", chain(del_path("stableImage"), _template(image="registry.example.com/web")), "app.template: main container image", "must name a tag or a digest", "registry.example.com/web"),
    ("config-map-simple-form", set_path("app.configMaps", {"settings": {"data": {"a": "b"}}}), "app.configMaps.settings", "needs a template that reads it", "settings"),
    ("secret-simple-form", set_path("app.secrets", {"creds": {"stringData": {"a": "<encrypted>"}}}), "app.secrets.creds", "the simple form (image, env, resources, probes) reads no secret", "creds"),
    ("config-map-not-read", chain(_template(), set_path("app.configMaps", {"settings": {"data": {"a": "b"}}})), "app.configMaps.settings", "the template reads no configMap of that name", "settings"),
    # --- the route and Prometheus
    ("hostname-invalid", set_path("gateway.hostnames", ["Web..example"]), "gateway.hostnames[0]", "DNS-1123 hostname", "'Web..example'"),
    ("no-parent-refs", set_path("gateway.parentRefs", []), "gateway.parentRefs", "at least 1 item", "[]"),
    ("parent-ref-port", set_path("gateway.parentRefs.0.port", 0), "gateway.parentRefs[0].port", "greater than or equal to 1", "0"),
    ("no-gateway", del_path("gateway"), "gateway", "is required with app", "nothing"),
    ("prometheus-bad-address", set_path("prometheus.address", "prometheus:9090"), "prometheus.address", "http:// or https:// URL", "'prometheus:9090'"),
    ("prometheus-missing-for-builtin", del_path("prometheus"), "prometheus.address", "built-in metrics query", "None"),
    ("prometheus-timeout-too-long", set_path("prometheus.timeout", "10m"), "prometheus.timeout", "at most 5m", "'10m'"),
    ("prometheus-pod-label-dash", set_path("prometheus.podLabel", "pod-name"), "prometheus.podLabel", "must be a Prometheus label name", "'pod-name'"),
    ("prometheus-pod-label-digit", set_path("prometheus.podLabel", "1pod"), "prometheus.podLabel", "not starting with a digit", "'1pod'"),
    ("prometheus-namespace-label-dash", set_path("prometheus.namespaceLabel", "kubernetes-namespace"), "prometheus.namespaceLabel",
     "must be a Prometheus label name", "'kubernetes-namespace'"),
    ("prometheus-namespace-label-selector", set_path("prometheus.namespaceLabel", 'namespace="prod",x'), "prometheus.namespaceLabel",
     "(letters, digits, '_', not starting with a digit)", "'namespace=\"prod\",x'"),
    ("request-count-unknown-placeholder", set_path("prometheus.requestCount", 'sum(increase(x{p=~"{{ pod }}-.*"}[{{ interval }}]))'),
     "prometheus.requestCount", "uses unknown placeholder {{ pod }}", "'sum(increase(x{p=~\"{{ pod }}-.*\"}[{{ interval }}]))'"),
    ("request-count-fixed-window", set_path("prometheus.requestCount", 'sum(increase(x{p=~"{{ target }}-.*"}[5m]))'),
     "prometheus.requestCount", "must use {{ interval }}", "'sum(increase(x{p=~\"{{ target }}-.*\"}[5m]))'"),
    ("request-count-both-tracks", set_path("prometheus.requestCount", "sum(increase(x[{{ interval }}]))"),
     "prometheus.requestCount", "must use {{ target }}: it counts the requests one track's pods", "'sum(increase(x[{{ interval }}]))'"),
    ("request-count-variable", set_path("prometheus.requestCount", 'sum(increase(x{p=~"{{ target }}",q="{{ variables.q }}"}[{{ interval }}]))'),
     "prometheus.requestCount", "uses {{ variables.q }}: a request count has no templateVariables",
     '\'sum(increase(x{p=~"{{ target }}",q="{{ variables.q }}"}[{{ interval }}]))\''),
    ("request-count-unbalanced", set_path("prometheus.requestCount", 'sum(increase(x{p=~"{{ target }}"}[{{ interval }}])'),
     "prometheus.requestCount", "is not valid PromQL: unclosed '('", "'sum(increase(x{p=~\"{{ target }}\"}[{{ interval }}])'"),
    ("pushgateway-not-a-url", set_path("prometheus.pushgateway", "pushgateway:9091"), "prometheus.pushgateway", "http:// or https:// URL", "'pushgateway:9091'"),
    ("pushgateway-ftp", set_path("prometheus.pushgateway", "ftp://pushgateway:9091"), "prometheus.pushgateway", "http:// or https:// URL", "'ftp://pushgateway:9091'"),
    ("template-provider-bad-address", set_path("metricTemplates.error-rate.provider.address", "other:9090"), "metricTemplates.error-rate.provider.address", "http:// or https:// URL", "'other:9090'"),
    # --- the stack
    ("unknown-field", set_path("analysis.stepweight", 10), "analysis.stepweight", "is not a known field", "10"),
    ("unknown-top-level-key", set_path("canaryImages", "x"), "canaryImages", "is not a known field", "'x'"),
    ("rollout-unknown", set_path("rollout", "yolo"), "rollout", "'checked' or 'direct'", "'yolo'"),
    ("no-analysis", del_path("analysis"), "analysis", "is required (or declare apps under apps.<name>)", "nothing"),
    ("apps-name-differs-from-key", _apps(name="api"), "apps.web.app.name", "must be the app's key in apps (web)", "api"),
    ("apps-key-not-dns", _apps(key="Web"), "apps.Web[key]", "DNS-1123 label", "'Web'"),
    ("apps-with-top-level-app", chain(_apps(), set_path("app", {"name": "web"})), "app", "declares each app under apps.<name>, not at the top level", "set"),
    ("apps-with-top-level-stable-image", chain(_apps(), set_path("stableImage", BASE_IMAGE)), "stableImage", "not at the top level", "set"),
    ("apps-app-without-gateway", chain(_apps(), del_path("apps.web.gateway")), "apps.web.gateway", "is required with app", "nothing"),
    ("apps-app-problem-named-under-its-key", chain(_apps(), set_path("apps.web.app.replicas", 0)), "apps.web.app.replicas", "greater than or equal to 1", "0"),
    ("apps-stable-image-differs", chain(_apps(), set_path("apps.web.stableImage", IMAGE_2)), "apps.web.stableImage", "is the earlier name of app.image", IMAGE_2),
    # --- values that passed the rules and broke later (a traceback, a wait without end, a failing hook)
    ("interval-too-long", set_path("analysis.interval", "99999999999h"), "analysis.interval", "at most 8784h", "99999999999h"),
    # thousands of digits: Python's own limit ("use sys.set_int_max_str_digits()") was the rule shown
    ("probe-period-beyond-int32", set_path("app.probes", {"readiness": {"periodSeconds": 2**31}}), "app.probes.readiness.periodSeconds",
     "less than or equal to 2147483647", "2147483648"),
    ("disruption-budget-beyond-int32", set_path("app.disruptionBudget", {"minAvailable": 2**40}), "app.disruptionBudget", "0 to 2147483647", "a mapping of minAvailable"),
    ("template-port-beyond-65535", chain(_template(ports=[{"containerPort": 2**40}]), del_path("app.port")), "app.port", "which is no TCP port", "nothing"),
    ("interval-of-thousands-of-digits", set_path("analysis.interval", "9" * 5000), "analysis.interval", "at most 8784h", "'99999999"),
    ("interval-not-a-number", set_path("analysis.interval", float("nan")), "analysis.interval", "finite number of seconds", "nan"),
    ("hold-limit-zero-spelled-0s", set_path("analysis.holdLimit", "0s"), "analysis.holdLimit", "greater than zero", "0s"),
    ("judge-step-zero-spelled-0s", set_path("analysis.metrics.1.judge", {"step": "0s"}), "analysis.metrics[1].judge.step", "greater than zero", "0s"),
    ("warmup-negative", set_path("analysis.warmup", "-1s"), "analysis.warmup", "must not be negative", "-1s"),
    ("affinity-max-age-below-a-second", set_path("analysis.sessionAffinity", {"maxAge": "500ms"}), "analysis.sessionAffinity.maxAge", "whole seconds", "500ms"),
    ("resources-quantity-overflows", set_path("app.resources", {"requests": {"cpu": "1e400"}, "limits": {"cpu": "1"}}), "app.resources", "too large for a Kubernetes quantity", "requests"),
    ("template-quantity-overflows", _template(resources={"requests": {"cpu": "1e400"}, "limits": {"cpu": "1"}}),
     "app.template.spec.containers[0].resources.requests.cpu", "too large for a Kubernetes quantity", "1e400"),
    ("container-without-template", set_path("app.container", "sidecar"), "app.container", "set it only with template", "sidecar"),
    ("disruption-budget-negative", set_path("app.disruptionBudget", {"minAvailable": -1}), "app.disruptionBudget", "count of pods (0 to 2147483647)", "minAvailable"),
    ("disruption-budget-above-100-percent", set_path("app.disruptionBudget", {"maxUnavailable": "500%"}), "app.disruptionBudget", "a percentage from 0% to 100%", "maxUnavailable"),
    ("disruption-budget-boolean", set_path("app.disruptionBudget", {"minAvailable": True}), "app.disruptionBudget.minAvailable", "not true or false", "True"),
    ("match-regex-lookahead", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"headers": {"x-user": {"regex": "(?=a)b"}}}])),
     "analysis.match[0].headers.x-user", "a lookahead or lookbehind, which RE2", "regex"),
    ("match-regex-backreference", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"headers": {"x-user": {"regex": "(a)\\1"}}}])),
     "analysis.match[0].headers.x-user", "a backreference, which RE2", "regex"),
    # what Python compiles and RE2 (the gateways') refuses or reads as text: the gateway would drop or mis-serve the rule
    ("match-regex-end-of-string-z", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"headers": {"x-user": {"regex": "^beta\\Z"}}}])),
     "analysis.match[0].headers.x-user", "uses \\Z, which RE2", "regex"),
    ("match-regex-verbose-flag", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"queryParams": {"beta": {"regex": "(?x) yes"}}}])),
     "analysis.match[0].queryParams.beta", "the inline flag x (verbose mode), which RE2 (the gateway's regular expressions) does not have (RE2's inline flags are i, m, s and U)", "regex"),
    ("match-regex-unicode-escape", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"headers": {"x-user": {"regex": "caf\\u00e9"}}}])),
     "analysis.match[0].headers.x-user", "a \\u escape, which RE2", "regex"),
    ("match-regex-count-read-as-text", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"headers": {"x-user": {"regex": "a{,3}"}}}])),
     "analysis.match[0].headers.x-user", "RE2 reads as the literal text '{,3}', not as a repetition (write {0,3})", "regex"),
    ("match-regex-count-above-1000", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"headers": {"x-user": {"regex": "a{1001}"}}}])),
     "analysis.match[0].headers.x-user", "the repetition count 1001, above RE2's limit of 1000", "regex"),
    ("match-regex-nested-too-deep", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"headers": {"x-user": {"regex": "(" * 600 + "a" + ")" * 600}}}])),
     "analysis.match[0].headers.x-user", "nests groups too deeply to be checked", "regex"),
    ("match-query-parameter-name", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"queryParams": {"a b": {"exact": "1"}}}])),
     "analysis.match[0]", "query parameter name 'a b'", "queryParams"),
    # the Gateway API's limits on a match, enforced by the API server only at the `up`
    ("match-exact-empty", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"headers": {"x-user": {"exact": ""}}}])),
     "analysis.match[0]", "header x-user: its exact value must be 1 to 4096 characters", "headers"),
    ("match-regex-empty", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"queryParams": {"beta": {"regex": ""}}}])),
     "analysis.match[0]", "query parameter beta: its regex value must be 1 to 1024 characters", "queryParams"),
    ("match-query-value-too-long", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"queryParams": {"beta": {"exact": "a" * 1025}}}])),
     "analysis.match[0]", "must be 1 to 1024 characters (the Gateway API's rule), not 1025", "queryParams"),
    ("match-header-name-too-long", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"headers": {"x" * 257: {"exact": "1"}}}])),
     "analysis.match[0]", "must be 1 to 256 letters", "headers"),
    ("match-seventeen-headers", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"headers": {f"x-{i}": {"exact": "1"} for i in range(17)}}])),
     "analysis.match[0]", "has 17 headers: the Gateway API allows at most 16", "headers"),
    ("match-header-twice-in-other-case", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"headers": {"X-Env": {"exact": "a"}, "x-env": {"exact": "b"}}}])),
     "analysis.match[0]", "headers 'X-Env' and 'x-env' are the same header", "headers"),
    ("match-too-many-entries", chain(_no_weights(), set_path("analysis.iterations", 5), set_path("analysis.match", [{"headers": {"x-user": {"exact": str(i)}}} for i in range(65)])),
     "analysis.match", "has 65 entries: the Gateway API allows at most 64 matches", "headers"),
    ("webhook-cmd-unbalanced-quote", set_path("analysis.webhooks.0.cmd", "hey 'x"), "analysis.webhooks[0].cmd", "cannot be split into a command line", "hey 'x"),
    ("webhook-cmd-blank", set_path("analysis.webhooks.0.cmd", "''"), "analysis.webhooks[0].cmd", "must name a command", "''"),
    ("prometheus-address-port-out-of-range", set_path("prometheus.address", "http://prometheus:99999"), "prometheus.address", "its port 99999 is not one", "99999"),
    ("pod-monitor-path-relative", set_path("prometheus.podMonitor", {"path": "metrics"}), "prometheus.podMonitor.path", "starting with '/'", "'metrics'"),
    ("metric-template-key-not-dns", set_path("metricTemplates.Error Rate", {"query": "up"}), "metricTemplates.Error Rate[key]", "DNS-1123 label", "'Error Rate'"),
    ("gateway-hostname-twice", set_path("gateway.hostnames", ["web.example.com", "web.example.com"]), "gateway", "hostnames must be distinct: web.example.com is given twice", "hostnames"),
    ("gateway-parent-ref-twice", set_path("gateway.parentRefs", [{"name": "public", "namespace": "gw"}, {"name": "public", "namespace": "gw"}]), "gateway",
     "parentRefs must be distinct: public.gw is given twice", "parentRefs"),
    ("gateway-too-many-hostnames", set_path("gateway.hostnames", [f"h{i}.example.com" for i in range(17)]), "gateway.hostnames", "at most 16 items", "h0.example.com"),
    ("alert-url-empty", set_path("analysis.alerts", [{"name": "chat", "type": "slack", "url": ""}]), "analysis.alerts[0].url", "http:// or https:// URL", "<secret>"),
    ("threshold-boolean", set_path("analysis.threshold", True), "analysis.threshold", "must be a number, not true or false", "True"),
    ("threshold-range-boolean", set_path("analysis.metrics.1.thresholdRange", {"max": True}), "analysis.metrics[1].thresholdRange.max", "not true or false", "True"),
    ("step-weight-boolean", set_path("analysis.stepWeight", True), "analysis.stepWeight", "not true or false", "True"),
    ("alert-names-not-unique", set_path("analysis.alerts", [{"name": "chat", "type": "slack", "url": "<encrypted>"}, {"name": "chat", "type": "msteams", "url": "<encrypted>"}]),
     "analysis.alerts[1].name", "must be unique among analysis.alerts", "chat"),
]


@pytest.mark.parametrize(("mutation", "field", "rule", "shown"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_input_is_refused_with_field_value_and_rule(mutation: Any, field: str, rule: str, shown: str) -> None:
    values = values_with(mutation)
    found = problems(values)
    fields = [p.field for p in found]
    assert field in fields, f"{field} not among {fields}"
    matching = [p for p in found if p.field == field and rule in p.rule]
    assert matching, f"no problem of {field} says {rule!r}: {[str(p) for p in found]}"
    problem = matching[0]
    assert shown in problem.value, f"the value shown is {problem.value!r}"
    message = str(InvalidSpec(found, "stack config"))
    assert f"{field}: " in message and rule in message and f"(got {problem.value})" in message


def test_the_invalid_table_has_distinct_cases() -> None:
    ids = [case[0] for case in INVALID]
    assert len(ids) == len(set(ids)) and len(ids) >= 100


# --- valid input --------------------------------------------------------------------------------


def test_base_values_parse() -> None:
    spec = parse_spec(base_values())
    assert spec.analysis.interval == timedelta(minutes=1)
    assert spec.analysis.metrics[0].on_no_data is NoDataPolicy.FAIL
    assert spec.analysis.webhooks[0].type is WebhookType.ROLLOUT
    assert spec.app.image == BASE_IMAGE  # stableImage is the earlier name of app.image
    assert (spec.target, spec.stable) == ("web-canary", "web-stable")
    assert spec.analysis.kind is Strategy.CANARY


def test_defaults_of_the_new_analysis_fields() -> None:
    analysis = parse_spec(base_values()).analysis
    assert analysis.warmup == timedelta(seconds=30)
    assert analysis.confidence == 0.95
    assert analysis.failures_allowed == analysis.threshold == 3  # failureLimit defaults to threshold
    assert analysis.hold_bound == timedelta(minutes=10)  # holdLimit defaults to 10 intervals


@pytest.mark.parametrize(
    ("changes", "failures", "hold"),
    [({"failureLimit": 7}, 7, timedelta(minutes=10)), ({"holdLimit": "3m"}, 3, timedelta(minutes=3)), ({"interval": "30s"}, 3, timedelta(minutes=5))],
)
def test_failure_limit_and_hold_limit(changes: dict[str, Any], failures: int, hold: timedelta) -> None:
    analysis = spec_with(update("analysis", **changes)).analysis
    assert analysis.failures_allowed == failures and analysis.hold_bound == hold


def test_spec_is_frozen() -> None:
    spec = parse_spec(base_values())
    with pytest.raises(ValidationError, match="frozen"):
        spec.app.replicas = 10  # type: ignore[misc]


@pytest.mark.parametrize(
    ("mutation", "kind"),
    [
        (update("analysis"), Strategy.CANARY),
        (chain(_no_weights(), update("analysis", iterations=4)), Strategy.BLUE_GREEN),
        (chain(_no_weights(), update("analysis", iterations=4, match=[{"headers": {"x-canary": {"exact": "insider"}}}])), Strategy.AB),
        (chain(_no_weights(), update("analysis", strategy="blueGreen", iterations=4, match=[{"headers": {"x-canary": {"exact": "insider"}}}])), Strategy.BLUE_GREEN),
        (chain(_no_weights(), update("analysis", iterations=4, mirror=True, mirrorWeight=30)), Strategy.BLUE_GREEN),
    ],
)
def test_strategy_follows_flaggers_rule_unless_set(mutation: Any, kind: Strategy) -> None:
    assert spec_with(mutation).analysis.kind is kind


def test_a_full_pod_template_is_accepted_and_gives_the_port_and_image() -> None:
    template = pod_template(image=IMAGE_2, ports=[{"containerPort": 9090}], env=[{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}}])
    spec = spec_with(del_path("stableImage"), del_path("app.port"), set_path("app.template", template),
                     set_path("app.configMaps", {"settings": {"data": {"mode": "fast"}}}))
    assert spec.app.template == template and spec.app.image is None
    assert spec.app.container_port == 9090
    assert spec.app.config_maps["settings"].data == {"mode": "fast"}


def test_the_simple_form_defaults_the_port_to_8080() -> None:
    assert spec_with(del_path("app.port")).app.container_port == 8080


def test_an_autoscaler_and_a_disruption_budget_are_accepted() -> None:
    spec = spec_with(del_path("app.replicas"), set_path("app.autoscaler", {"minReplicas": 2, "maxReplicas": 8, "metrics": [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]}),
        set_path("app.disruptionBudget", {"maxUnavailable": "25%"}))
    assert spec.app.autoscaler is not None and (spec.app.autoscaler.min_replicas, spec.app.autoscaler.max_replicas) == (2, 8)
    assert spec.app.disruption_budget is not None and spec.app.disruption_budget.max_unavailable == "25%"


def test_the_same_image_under_both_names_is_accepted() -> None:
    assert spec_with(set_path("app.image", BASE_IMAGE)).app.image == BASE_IMAGE


@pytest.mark.parametrize(("key", "field_name"), [("podLabel", "pod_label"), ("namespaceLabel", "namespace_label"), ("pushgateway", "pushgateway")])
def test_prometheus_pod_label_and_pushgateway(key: str, field_name: str) -> None:
    value = {"podLabel": "pod", "namespaceLabel": "kubernetes_namespace", "pushgateway": "http://pushgateway.monitoring:9091"}[key]
    assert getattr(spec_with(set_path(f"prometheus.{key}", value)).prometheus, field_name) == value


def test_the_namespace_label_defaults_to_namespace() -> None:
    prometheus = spec_with().prometheus
    assert prometheus is not None and prometheus.namespace_label == "namespace"


def test_multi_app_stacks_give_each_app_by_name() -> None:
    values = values_with(_apps())
    api = {"app": {"name": "api", "image": IMAGE_2}, "gateway": values["apps"]["web"]["gateway"], "analysis": values["apps"]["web"]["analysis"]}
    values["apps"]["api"] = api
    stack = parse_stack(values)
    assert sorted(stack.app_configs()) == ["api", "web"]
    assert stack.release_spec("api").app.image == IMAGE_2 and stack.release_spec("api").target == "api-canary"
    assert stack.release_spec("web").prometheus == stack.prometheus
    assert stack.fields("api") == "apps.api." and parse_stack(values_with()).fields("web") == ""
    with pytest.raises(InvalidSpec) as info:
        parse_spec(values)
    assert [(p.field, p.rule) for p in info.value.problems] == [("apps", "holds several apps: name the one meant")]
    assert info.value.problems[0].value == "web, api"


def test_an_app_declared_by_the_stack_config_and_a_component_is_refused() -> None:
    # the stack config's app and gateway silently won over the component's: the release judged another app
    from canary.core.spec import App, Gateway

    component_app = App(name="web", namespace="shop", image=IMAGE_2, replicas=4)
    gateway = Gateway.model_validate({"parentRefs": [{"name": "internal", "namespace": "gateway"}]})
    for values, fields in ((values_with(), ["app", "gateway"]), (values_with(_apps()), ["apps.web.app", "apps.web.gateway"])):
        with pytest.raises(InvalidSpec) as info:
            parse_stack(values).release_spec("web", component_app, gateway)
        assert [p.field for p in info.value.problems] == fields
        assert "which a component of the program declares too: keep one" in str(info.value)
        assert parse_stack(values).release_spec("web").app.replicas == 2  # the stack config's alone
    judged_only = values_with(_apps())
    del judged_only["apps"]["web"]["app"], judged_only["apps"]["web"]["gateway"]
    spec = parse_stack(judged_only).release_spec("web", component_app, gateway)
    assert (spec.app, spec.gateway) == (component_app, gateway)


def test_two_apps_of_one_namespace_whose_objects_share_names_are_refused() -> None:
    # app web-canary beside web wants the Service web-canary, which is web's canary Service: the up failed,
    # or web's canary share reached web-canary's pods
    values = values_with(_apps())
    web = values["apps"]["web"]
    values["apps"]["web-canary"] = {**web, "app": {**web["app"], "name": "web-canary"}}
    with pytest.raises(InvalidSpec) as info:
        parse_stack(values)
    assert [(p.field, p.value) for p in info.value.problems] == [("apps.web-canary", "web-canary")]
    assert "clashes with app web in namespace prod: both would own the Service and Deployment named web-canary" in info.value.problems[0].rule
    values["apps"]["web-canary"]["app"]["namespace"] = "staging"  # apart, they share nothing
    assert sorted(parse_stack(values).app_configs()) == ["web", "web-canary"]


def test_two_apps_of_one_namespace_may_read_one_config_map_of_one_content() -> None:
    # they share its copy (named by its content), each with a label of its own
    values = values_with(_apps())
    web = values["apps"]["web"]
    web["app"]["template"] = pod_template(envFrom=[{"configMapRef": {"name": "settings"}}, {"secretRef": {"name": "creds"}}])
    web["app"]["configMaps"] = {"settings": {"data": {"a": "1"}}}
    web["app"]["secrets"] = {"creds": {"stringData": {"b": "2"}}}
    values["apps"]["api"] = copy.deepcopy({**web, "app": {**web["app"], "name": "api"}})
    assert sorted(parse_stack(values).app_configs()) == ["api", "web"]


@pytest.mark.parametrize("name", ["2048", "9-lives"])
def test_an_app_name_starting_with_a_digit_is_refused_as_it_names_services(name: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_stack(values_with(set_path("app.name", name)))
    assert [p.field for p in info.value.problems] == ["app.name"] and "DNS-1035 label (it names Services)" in info.value.problems[0].rule


def test_an_app_declared_by_the_program_only_must_come_from_a_component() -> None:
    stack = parse_stack(values_with(del_path("app"), del_path("gateway")))
    with pytest.raises(InvalidSpec) as info:
        stack.release_spec("app")
    (problem,) = info.value.problems
    assert problem.field == "apps.app" and "declared neither in the stack config nor by a component" in problem.rule


# --- every problem at once; no secret in a message ----------------------------------------------


def test_all_problems_are_reported_at_once() -> None:
    found = problems(values_with(set_path("analysis.threshold", 0), set_path("app.port", 0), set_path("prometheus.podLabel", "pod-name")))
    assert {"analysis.threshold", "app.port", "prometheus.podLabel"} <= {p.field for p in found}


def test_cross_field_problems_are_reported_at_once() -> None:
    found = problems(values_with(set_path("app.image", IMAGE_2), set_path("analysis.mirrorWeight", 10), set_path("analysis.metrics.1.name", "latency"),
                                 set_path("app.autoscaler", {"maxReplicas": 3})))
    assert {"stableImage", "analysis.mirrorWeight", "analysis.metrics[1].name", "app.replicas"} <= {p.field for p in found}


def test_template_problems_are_reported_at_once_with_their_paths() -> None:
    template = {"spec": {"containers": [{"name": "web", "image": BASE_IMAGE, "imagePullPolicy": 3, "portz": []}, {"image": "sidecar:1"}]}}
    found = problems(values_with(set_path("app.template", template)))
    assert {p.field: p.rule for p in found if p.field.startswith("app.template")} == {
        "app.template.spec.containers[0].imagePullPolicy": "must be a string",
        "app.template.spec.containers[0].portz": "is not a field of Container (did you mean ports?)",
        "app.template.spec.containers[1].name": "is required",
    }


@pytest.mark.parametrize(("spec", "field"), [
    ({"volumes": [{"name": "v", "configMap": {"name": []}}]}, "app.template.spec.volumes[0].configMap.name"),
    ({"volumes": [{"name": "v", "secret": {"secretName": ["x"]}}]}, "app.template.spec.volumes[0].secret.secretName"),
    ({"envFrom": [{"secretRef": {"name": {"x": 1}}}]}, "app.template.spec.containers[0].envFrom[0].secretRef.name"),
], ids=["config-map-name-list", "secret-name-list", "env-from-name-mapping"])
def test_a_config_reference_that_is_not_a_name_is_refused_naming_it_not_a_type_error(spec: dict[str, Any], field: str) -> None:
    container = {"name": "web", "image": BASE_IMAGE, **({"envFrom": spec["envFrom"]} if "envFrom" in spec else {})}
    template = {"spec": {"containers": [container], **({"volumes": spec["volumes"]} if "volumes" in spec else {})}}
    found = problems(values_with(set_path("app.template", template)))
    assert field in {p.field for p in found}, found


@pytest.mark.parametrize(("containers", "field", "rule"), [
    ([{"name": "proxy", "image": "envoy:1.30", "ports": [{"containerPort": 5432}]}, {"name": "api", "image": BASE_IMAGE}],
     "app.container", "is required: the template has several containers (proxy, api) and none is named like the app (web)"),
    ([{"name": "web", "image": BASE_IMAGE, "ports": [{"name": "metrics", "containerPort": 9090}, {"name": "grpc", "containerPort": 8081}]}],
     "app.port", "is required: the main container web lists several ports (metrics 9090, grpc 8081) and none is named http"),
], ids=["container", "port"])
def test_a_template_whose_main_container_or_port_would_be_a_guess_is_refused(containers: list[dict[str, Any]], field: str, rule: str) -> None:
    found = problems(values_with(del_path("app.port"), set_path("app.template", {"spec": {"containers": containers}})))
    assert any(p.field == field and p.rule.startswith(rule) for p in found), [str(p) for p in found]


SECRET = "s3cr3t-value"


@pytest.mark.parametrize(
    "mutation",
    [
        set_path("prometheus.token", 12345),
        set_path("prometheus.token", [SECRET]),
        set_path("prometheus.headers", {"X-Scope-OrgID": 7, "bad header": SECRET}),
        chain(set_path("prometheus.address", "nope"), set_path("prometheus.token", SECRET)),
        set_path("prometheus", {"token": SECRET}),  # a missing address never shows its parent mapping
        set_path("analysis.alerts", [{"name": "chat", "type": "slack", "url": f"hooks.slack.com/{SECRET}"}]),
        set_path("analysis.alerts", [{"name": "chat", "type": "irc", "url": f"https://hooks.slack.com/{SECRET}"}]),
        set_path("analysis.alerts", [{"name": "Chat", "type": "slack", "url": [SECRET]}]),
        chain(_template(), set_path("app.secrets", {"db": {"stringData": {"password": 12345}}})),
        chain(_template(), set_path("app.secrets", {"db": {"stringData": {"password": SECRET}}})),  # read by no container
        chain(_apps(), set_path("apps.web.analysis.alerts", [{"name": "chat", "type": "slack", "url": f"ftp://{SECRET}"}])),
        # the wrong shape, the secret where its section should be: the value refused is the secret itself
        chain(_template(), set_path("app.secrets", {"db": SECRET})),
        chain(_template(), set_path("app.secrets", SECRET)),
        set_path("analysis.alerts", [f"https://hooks.slack.com/{SECRET}"]),
        set_path("analysis.alerts", f"https://hooks.slack.com/{SECRET}"),
        set_path("prometheus", [{"address": "http://prom:9090", "token": SECRET}]),
        # a URL refused for its port, its scheme or its shape: its user info, path and query are never shown
        set_path("analysis.webhooks.0", {"name": "gate", "type": "confirm-rollout", "url": f"https://ci:{SECRET}@gate.example:99999/approve"}),
        set_path("analysis.webhooks.0", {"name": "gate", "type": "confirm-rollout", "url": f"https://gate.example:70000/approve?token={SECRET}"}),
        set_path("analysis.webhooks.0", {"name": "gate", "type": "confirm-rollout", "url": f"ftp://gate.example/{SECRET}#{SECRET}"}),
        set_path("analysis.webhooks.0", {"name": "gate", "type": "confirm-rollout", "url": f"ci:{SECRET}@gate.example/approve"}),
        set_path("analysis.webhooks.0", f"https://gate.example:99999/approve?token={SECRET}"),
        set_path("prometheus.address", f"https://prom.example:99999/api?token={SECRET}"),
        set_path("prometheus.pushgateway", f"https://push.example:0/{SECRET}"),
        set_path("metricTemplates.error-rate.provider.address", f"https://other.example:99999/?token={SECRET}"),
        chain(_apps(), set_path("apps.web.analysis.webhooks.0.url", f"https://gate.example:99999/?token={SECRET}")),
    ],
    ids=["token-int", "token-list", "headers", "token-next-to-a-bad-address", "token-without-address", "alert-not-a-url", "alert-bad-type",
         "alert-url-list", "secret-int", "secret-unread", "apps-alert", "secret-as-a-string", "secrets-as-a-string", "alert-as-its-url",
         "alerts-as-a-url", "prometheus-as-a-list", "webhook-password-bad-port", "webhook-token-bad-port", "webhook-ftp-path-fragment",
         "webhook-no-scheme", "webhook-as-its-url", "prometheus-token-bad-port", "pushgateway-path-port-0", "provider-token-bad-port",
         "apps-webhook-token-bad-port"],
)
def test_secret_values_never_appear_in_errors(mutation: Any) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec(values_with(mutation))
    message = str(info.value)
    assert SECRET not in message and "12345" not in message
    assert all(SECRET not in p.value and SECRET not in p.rule for p in info.value.problems)
    # nor in a traceback: pydantic's own error, which quotes every input, is not chained to it
    assert SECRET not in "".join(traceback.format_exception(info.value))


@pytest.mark.parametrize(("mutation", "field", "shown"), [
    (set_path("analysis.webhooks.0.url", "https://ci:Pa55w0rd@gate.example:99999/approve?token=t0k3n#f"), "analysis.webhooks[0].url",
     "'https://gate.example:99999'"),
    (set_path("prometheus.address", "http://[fd00::9]:70000/prom?token=t0k3n"), "prometheus.address", "'http://[fd00::9]:70000'"),
    (set_path("prometheus.pushgateway", "ftp://push.example/t0k3n"), "prometheus.pushgateway", "'ftp://push.example'"),
    (set_path("metricTemplates.error-rate.provider.address", "https://other.example:0?token=t0k3n"), "metricTemplates.error-rate.provider.address",
     "'https://other.example:0'"),
    (set_path("analysis.webhooks.0.url", "https://ci:Pa55w0rd"), "analysis.webhooks[0].url", "<not shown: it may hold credentials>"),
], ids=["webhook", "prometheus-ipv6", "pushgateway-scheme", "provider-port-0", "no-host-to-tell"])
def test_a_refused_url_is_shown_by_its_scheme_host_and_port_only(mutation: Any, field: str, shown: str) -> None:
    """A refused URL was shown whole: its password, path and query (``?token=``) went to the terminal and the CI log.
    Its origin names it; what cannot be told apart from a password (no ``scheme://host``) is not shown at all."""
    found = [p for p in problems(values_with(mutation)) if p.field == field]
    assert len(found) == 1 and found[0].value == shown and "http:// or https:// URL" in found[0].rule, [str(p) for p in found]
    assert "Pa55w0rd" not in str(found[0]) and "t0k3n" not in str(found[0]), found[0]


def test_a_webhook_url_with_user_info_is_accepted_as_basic_auth_and_prometheus_s_is_not() -> None:
    """A webhook's ``user:password@`` (sent as basic auth, scrubbed from results) was refused as "not an http URL":
    a gate behind basic auth could not be configured, and the rule named was the wrong one."""
    for url in ("https://ci:Pa55w0rd@gate.example/approve", "https://ci:p@ss@gate.example:8443/approve", "http://token@gate.svc/"):
        spec = parse_spec(values_with(set_path("analysis.webhooks.0", {"name": "gate", "type": "confirm-rollout", "url": url})))
        assert spec.analysis.webhooks[0].url == url
    found = [p for p in problems(values_with(set_path("analysis.webhooks.0.url", "https://ci:Pa55w0rd@gate.example:99999/"))) if "webhooks" in p.field]
    assert [p.rule for p in found] == ["must be an http:// or https:// URL; its port 99999 is not one (1-65535)"], [str(p) for p in found]
    found = problems(values_with(set_path("prometheus.address", "https://ci:Pa55w0rd@prom.example/")))
    assert [p.field for p in found] == ["prometheus.address"] and found[0].rule.startswith("must not carry credentials in the URL"), found


# --- config: secrets must be Pulumi secrets; the same spec from a file and from the Automation API --


def _config(values: dict[str, Any]) -> dict[str, Any]:
    return {f"canary:{key}": value for key, value in values.items()}


@pytest.mark.parametrize(
    ("mutation", "path", "key"),
    [
        (set_path("prometheus.token", SECRET), "prometheus.token", "canary:prometheus.token"),
        (set_path("prometheus.headers", {"X-Scope-OrgID": SECRET}), "prometheus.headers", """'canary:prometheus.headers["X-Scope-OrgID"]'"""),
        (set_path("analysis.alerts", [{"name": "chat", "type": "slack", "url": f"https://hooks.slack.com/{SECRET}"}]), "analysis.alerts[0].url",
         "'canary:analysis.alerts[0].url'"),
        (chain(_template(env=[{"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]), set_path("app.secrets", {"db": {"stringData": {"password": SECRET}}})),
         "app.secrets.db.stringData", "canary:app.secrets.db.stringData.password"),
        (chain(_apps(), set_path("apps.web.analysis.alerts", [{"name": "chat", "type": "discord", "url": f"https://discord.com/api/webhooks/{SECRET}"}])),
         "apps.web.analysis.alerts[0].url", "'canary:apps.web.analysis.alerts[0].url'"),
    ],
)
def test_a_plaintext_secret_in_a_stack_file_is_refused(mutation: Any, path: str, key: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        stackconfig.from_file_values(_config(values_with(mutation)), "Pulumi.prod.yaml")
    (problem,) = info.value.problems
    assert problem.field == path and problem.value == "<secret>"
    # the very entry in its namespace, quoted for a shell: without the namespace, the command set <project>:prometheus.token
    # and left the plain one in place; naming a map (prometheus.headers), it made the map one secret string
    assert problem.rule == f"must be a Pulumi secret: pulumi config set --secret --path {key} ..."
    assert SECRET not in str(info.value) and info.value.source == "Pulumi.prod.yaml"


@pytest.mark.parametrize(
    ("mutation", "read"),
    [
        (set_path("prometheus.token", stackconfig.ENCRYPTED), lambda spec: spec.prometheus.token),
        (set_path("prometheus.headers", {"X-Scope-OrgID": stackconfig.ENCRYPTED}), lambda spec: spec.prometheus.headers["X-Scope-OrgID"]),
        (set_path("analysis.alerts", [{"name": "chat", "type": "slack", "url": stackconfig.ENCRYPTED}]), lambda spec: spec.app_configs()["web"].analysis.alerts[0].url),
    ],
    ids=["token", "headers", "alert-url"],
)
def test_an_encrypted_secret_in_a_stack_file_is_accepted(mutation: Any, read: Any) -> None:
    spec = stackconfig.from_file_values(_config(values_with(mutation)), "Pulumi.prod.yaml")
    assert read(spec).get_secret_value() == stackconfig.ENCRYPTED


def test_decode_secure_stands_in_for_ciphertext_at_any_depth() -> None:
    raw = {"canary:prometheus": {"address": "http://p:9090", "token": {"secure": "v1:abc"}}, "canary:analysis": {"alerts": [{"url": {"secure": "v1:def"}}]}}
    decoded = stackconfig.decode_secure(raw)
    assert decoded == {"canary:prometheus": {"address": "http://p:9090", "token": "<encrypted>"}, "canary:analysis": {"alerts": [{"url": "<encrypted>"}]}}
    assert "v1:abc" not in json.dumps(decoded)


@pytest.mark.parametrize("secret", [False, True])
def test_an_alert_url_from_the_automation_api_must_be_a_secret_key(secret: bool) -> None:
    """The Automation API decrypts secrets; the key's secret flag says whether it was one."""
    values = values_with(set_path("analysis.alerts", [{"name": "chat", "type": "slack", "url": f"https://hooks.slack.com/{SECRET}"}]))
    config = {key: ConfigValue(value=json.dumps(value) if not isinstance(value, str) else value, secret=secret and key == "canary:analysis")
              for key, value in _config(values).items()}
    if secret:
        spec = stackconfig.from_config(config)
        assert spec.app_configs()["web"].analysis.alerts[0].url.get_secret_value().endswith(SECRET)
        return
    with pytest.raises(InvalidSpec) as info:
        stackconfig.from_config(config)
    assert [p.field for p in info.value.problems] == ["analysis.alerts[0].url"] and SECRET not in str(info.value)


@pytest.mark.parametrize("match", [{"headers": {"x-canary-token": {"exact": "s3cr3t-TOKEN "}}}, {"headers": {"x-canary-token": {"regex": "s3cr3t(?=x)"}}}],
                         ids=["exact-with-a-space", "regex-beyond-re2"])
def test_a_rule_refusing_a_value_of_a_secret_key_does_not_quote_it(match: dict[str, Any]) -> None:
    # a header match held secret (set with --secret --path, which makes canary:analysis a secret key): the value was
    # hidden, but the rule quoted it ("header x-canary-token exact 's3cr3t-TOKEN ' begins or ends with whitespace")
    values = values_with(set_path("analysis.match", [match]))
    config = {key: ConfigValue(value=json.dumps(value) if not isinstance(value, str) else value, secret=key == "canary:analysis")
              for key, value in _config(values).items()}
    with pytest.raises(InvalidSpec) as info:
        stackconfig.from_config(config)
    (problem,) = info.value.problems
    assert problem.field.startswith("analysis.match[0]") and "s3cr3t" not in str(info.value), str(info.value)
    assert "<secret>" in problem.rule


def test_a_rule_about_another_field_of_a_secret_key_is_not_scrubbed() -> None:
    # every string of canary:analysis was cut from every rule once one of its leaves was a secret: "must be one of
    # 'confirm-rollout', …" read "must be one of 'confirm-<secret>', …" (the webhooks' type "rollout" was a leaf)
    values = values_with(set_path("analysis.match", [{"headers": {"x-canary-token": {"exact": "s3cr3t-TOKEN"}}}]),
                         set_path("analysis.webhooks", [{"name": "load", "type": "pre-promotion", "cmd": "true"},
                                                        {"name": "smoke", "type": "rollout", "cmd": "true"}]))
    config = {key: ConfigValue(value=json.dumps(value) if not isinstance(value, str) else value, secret=key == "canary:analysis")
              for key, value in _config(values).items()}
    with pytest.raises(InvalidSpec) as info:
        stackconfig.from_config(config)
    rules = {p.field: p.rule for p in info.value.problems}
    assert "'confirm-rollout'" in rules["analysis.webhooks[0].type"] and "<secret>" not in rules["analysis.webhooks[0].type"], rules


@pytest.mark.parametrize(("query", "value", "rule"), [
    ('sum(rate(x{app="a"}[1m])) # note: {{ variables.v }}', "x\n* 0", "would end the comment it stands in"),
    ('sum(rate(x{le="{{ variables.v }}"}[1m]))', "\\x4", "\\x, which is no escape"),
    ('sum(rate(x{le="{{ variables.v }}"}[1m]))', "\\x41\\101\\u00e9", None),
], ids=["line-break-in-a-comment", "short-hex-escape", "whole-escapes"])
def test_a_template_variable_is_checked_in_a_comment_and_by_whole_escapes(query: str, value: str, rule: str | None) -> None:
    # in a comment, a line break ended it and the rest was PromQL (a gate that never fails); \x and \u were checked
    # by their first character only, so \x4 passed and failed every query at the first tick
    from canary.core import templates

    found = templates.variable_problems(query, {"v": value})
    assert (rule in found.get("v", "")) if rule else found == {}, found


@pytest.mark.parametrize(("parts", "field"), [
    (("analysis", "alerts", 0, "url"), "analysis.alerts[0].url"),
    (("apps", "web", "app", "env", "DB_PASSWORD"), "apps.web.app.env.DB_PASSWORD"),
    (("prometheus", "headers", "x.[y"), "prometheus.headers.x.[y"),  # a key's own text is kept as it is
    ((0,), "[0]"),
    ((), ""),
])
def test_a_problems_field_is_written_one_way_from_a_pydantic_location_and_from_a_config_path(parts: tuple[str | int, ...], field: str) -> None:
    # parse_stack's problems (pydantic's locations) and the config's secret paths are compared as text (which top-level
    # key a problem is under, whether a secret's path is above or under it): one writer names both
    from canary.core.spec import field_name

    assert field_name(parts) == field


def test_unencrypted_secrets_skips_keys_the_cli_reports_as_secret() -> None:
    values = values_with(set_path("prometheus.token", SECRET), set_path("analysis.alerts", [{"name": "chat", "type": "slack", "url": "https://x"}]))
    assert [p.field for p in stackconfig.unencrypted_secrets(values, {"prometheus"})] == ["analysis.alerts[0].url"]
    assert [p.field for p in stackconfig.unencrypted_secrets(values, {"prometheus", "analysis"})] == []
    assert [p.field for p in stackconfig.unencrypted_secrets(values, None)] == ["prometheus.token", "analysis.alerts[0].url"]


def test_values_from_config_keeps_the_canary_namespace_and_decodes_json() -> None:
    config = {
        "canary:app": ConfigValue(value='{"name": "web"}'),
        "canary:rollout": ConfigValue(value="direct"),
        "canary:stableImage": "web:1",
        "kubernetes:context": ConfigValue(value="prod"),
        "canary:note": ConfigValue(value="[not json"),
    }
    assert stackconfig.values_from_config(config) == {"app": {"name": "web"}, "rollout": "direct", "stableImage": "web:1", "note": "[not json"}


def test_the_same_spec_loads_from_a_file_and_from_an_automation_config_map() -> None:
    raw = stackfile.read_stack_file(ROOT / "stacks" / "Pulumi.prod.yaml")
    from_file = stackconfig.from_file_values(raw, "Pulumi.prod.yaml")
    config_map = {k: ConfigValue(value=v if isinstance(v, str) else json.dumps(v), secret=False) for k, v in raw.items()}
    config_map["kubernetes:context"] = ConfigValue(value="prod-cluster")
    assert stackconfig.from_config(config_map) == from_file


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "lab"])
def test_example_stacks_are_valid(stack: str) -> None:
    spec = stackconfig.from_file_values(stackfile.read_stack_file(ROOT / "stacks" / f"Pulumi.{stack}.yaml"), stack)
    release = spec.release_spec("web")
    assert release.app.name == "web" and release.app.image and release.analysis.metrics


def test_file_contents_environment_values_and_secrets_are_kept_exactly_as_given() -> None:
    """A config file's final newline, a PEM key's, an env value's spaces: stripping them changes the app."""
    from canary.core.spec import App, SecretData

    app = App(name="web", image="demo:v1", env={"GREETING": " hello \n"}, configMaps={"settings": {"data": {"app.conf": "latency: 0\n"}}})
    assert app.env["GREETING"] == " hello \n" and app.config_maps["settings"].data["app.conf"] == "latency: 0\n"
    key = "-----BEGIN KEY-----\nabc\n-----END KEY-----\n"
    assert SecretData(stringData={"tls.key": key}).string_data["tls.key"].get_secret_value() == key


def test_a_top_level_analysis_belongs_to_the_one_app_a_program_declares() -> None:
    """A team's program declares the app (the component); the stack file has only canary:analysis:
    that analysis is the app's, whatever the component names it (not an app called "app")."""
    from canary.core.spec import App, Gateway, StackSpec

    spec = StackSpec.model_validate({"analysis": {"interval": "30s", "threshold": 3, "stepWeight": 10, "maxWeight": 50,
                                                  "metrics": [{"name": "request-duration", "thresholdRange": {"max": 500}}]},
                                     "prometheus": {"address": "http://prometheus:9090"}})
    app = App(name="shop-web", image="registry.example.com/shop/web:1.0", namespace="shop")
    gateway = Gateway.model_validate({"parentRefs": [{"name": "public"}]})
    release = spec.release_spec("shop-web", app, gateway)
    assert release.app.name == "shop-web" and release.analysis.threshold == 3


def test_a_number_given_as_text_is_still_a_number_but_a_boolean_is_not() -> None:
    # `pulumi config set --path` stores a value as text: "3" is three replicas, true is no count at all
    assert parse_spec(values_with(set_path("app.replicas", "3"))).app.replicas == 3
    assert parse_spec(values_with(set_path("analysis.metrics.1.thresholdRange", {"max": "1.5"}))).analysis.metrics[1].threshold_range.max == 1.5  # type: ignore[union-attr]


def test_a_plain_value_beside_an_encrypted_one_under_one_key_is_refused_as_the_stack_file_shows_it() -> None:
    # the CLI reports canary:prometheus as secret as a whole when its token is set --secret --path: the plain
    # header beside it was taken for a secret too
    values = values_with(set_path("prometheus.token", SECRET), set_path("prometheus.headers", {"X-Scope-OrgID": "shop"}))
    config = {key: ConfigValue(value=json.dumps(value) if not isinstance(value, str) else value, secret=key == "canary:prometheus")
              for key, value in _config(values).items()}
    on_file = {**_config(values), "canary:prometheus": {**values["prometheus"], "token": stackconfig.ENCRYPTED}}
    with pytest.raises(InvalidSpec) as info:
        stackconfig.from_config(config, stack_file=on_file)
    assert [p.field for p in info.value.problems] == ["prometheus.headers"] and SECRET not in str(info.value)
    on_file["canary:prometheus"]["headers"] = {"X-Scope-OrgID": stackconfig.ENCRYPTED}
    assert stackconfig.from_config(config, stack_file=on_file).prometheus is not None
    assert stackconfig.from_config(config).prometheus is not None  # no stack file to read (a service backend's config)


# --- config as users write it: camelCase names, `pulumi config set --path` values ---------------


@pytest.mark.parametrize(("mutation", "field_", "camel"), [
    (set_path("metric_templates", {}), "metric_templates", "metricTemplates"),
    (chain(del_path("analysis.stepWeight"), set_path("analysis.step_weight", 10)), "analysis.step_weight", "stepWeight"),
    (set_path("analysis.metrics.1.on_no_data", "pass"), "analysis.metrics[1].on_no_data", "onNoData"),
    (set_path("app.create_namespace", True), "app.create_namespace", "createNamespace"),
    (set_path("analysis.metrics.0.templateRef", {"name": "error-rate", "namespace": "x", "name_space": "y"}), "analysis.metrics[0].templateRef.name_space", "namespace"),
], ids=["top-level", "analysis", "metric", "app", "nearest"])
def test_a_field_by_its_python_name_is_refused_naming_the_config_name(mutation: Any, field_: str, camel: str) -> None:
    # the program reads canary:metricTemplates only: a snake_case key validated here would be ignored there
    found = {p.field: p.rule for p in problems(values_with(mutation))}
    assert found == {field_: f"is not a known field (did you mean {camel}?)"}


def test_an_unknown_field_with_no_near_name_gets_no_guess() -> None:
    found = problems(values_with(set_path("analysis.colour", "blue")))
    assert [(p.field, p.rule) for p in found] == [("analysis.colour", "is not a known field")]


@pytest.mark.parametrize(("path", "given", "read", "expected"), [
    ("app.env", {"WORKERS": 4}, lambda s: s.app.env["WORKERS"], "4"),
    ("app.env", {"DEBUG": True}, lambda s: s.app.env["DEBUG"], "true"),
    ("analysis.metrics.0.templateVariables", {"le": 1}, lambda s: s.analysis.metrics[0].template_variables["le"], "1"),
    ("analysis.webhooks.0.metadata", {"verbose": False}, lambda s: s.analysis.webhooks[0].metadata["verbose"], "false"),
], ids=["int", "true", "template-variable", "webhook-metadata"])
def test_a_number_or_boolean_stored_by_config_set_path_is_taken_as_its_text(path: str, given: Any, read: Any, expected: str) -> None:
    # `pulumi config set --path canary:app.env.WORKERS 4` stores the number 4: the variable is the text "4"
    assert read(parse_spec(values_with(set_path(path, given)))) == expected


@pytest.mark.parametrize(("path", "given", "field_"), [
    ("app.env", {"APP_VERSION": 1.10}, "app.env.APP_VERSION"),
    ("analysis.metrics.0.templateVariables", {"le": 0.50}, "analysis.metrics[0].templateVariables.le"),
], ids=["env", "template-variable"])
def test_a_number_with_a_decimal_point_in_a_text_field_is_refused_not_rewritten(path: str, given: Any, field_: str) -> None:
    # YAML reads 1.10 as the number 1.1: APP_VERSION became "1.1", a header match or a query's label another value
    # (`pulumi config set --path` stores 1.10 quoted: only a hand-written YAML number reaches here)
    found = {p.field: p.rule for p in problems(values_with(set_path(path, given)))}
    assert field_ in found and "quote it" in found[field_], found


def test_config_map_data_and_secret_values_take_numbers_as_text() -> None:
    template = pod_template(envFrom=[{"configMapRef": {"name": "settings"}}, {"secretRef": {"name": "creds"}}])
    spec = stackconfig.from_file_values(_config(values_with(
        set_path("app.template", template), set_path("app.configMaps", {"settings": {"data": {"PORT": 8080, "TLS": True}}}),
        set_path("app.secrets", {"creds": {"stringData": {"PIN": stackconfig.ENCRYPTED}}}))), "Pulumi.prod.yaml")
    assert spec.app is not None and spec.app.config_maps["settings"].data == {"PORT": "8080", "TLS": "true"}
    values = values_with(set_path("app.template", template), set_path("app.secrets", {"creds": {"stringData": {"PIN": 1234}}}))
    secrets = parse_spec(values).app.secrets  # the Automation API's decrypted value, typed by --path
    assert secrets["creds"].string_data["PIN"].get_secret_value() == "1234"


@pytest.mark.parametrize(("given", "kind"), [({"a": 1}, "not a mapping"), ([1, 2], "not a list"), (None, "not empty")])
def test_a_nested_value_where_a_string_belongs_is_refused_saying_so(given: Any, kind: str) -> None:
    found = problems(values_with(set_path("app.env", {"WORKERS": given})))
    assert [(p.field, p.rule) for p in found] == [("app.env.WORKERS", f"must be a string (a number or true/false is taken as its text), {kind}")]


def test_a_duration_given_as_text_of_a_number_is_seconds_as_the_number_is() -> None:
    # README: a bare number means seconds; `pulumi config set` without --path stores "30" as text
    assert parse_spec(values_with(set_path("analysis.interval", "30"))).analysis.interval == timedelta(seconds=30)
    assert parse_spec(values_with(set_path("analysis.interval", 30))).analysis.interval == timedelta(seconds=30)


@pytest.mark.parametrize("key", ["prometheus.timeout", "prometheus.token", 'prometheus.headers["X-Scope-OrgID"]', "analysis.alerts[0].url", "apps.web.analysis"])
def test_a_dotted_key_set_without_path_is_named_with_how_to_set_it_again(key: str) -> None:
    # `pulumi config set --secret canary:prometheus.timeout 5s` stores one key of that name: said as such, never shown
    config = {**_config(base_values()), f"canary:{key}": ConfigValue(value=SECRET, secret=True)}
    with pytest.raises(InvalidSpec) as info:
        stackconfig.from_config(config)
    [problem] = info.value.problems
    assert problem.field == key and "without --path" in problem.rule
    assert f"pulumi config rm canary:{key}" in problem.rule and f"pulumi config set --path canary:{key}" in problem.rule
    assert SECRET not in str(info.value)


def test_a_dotted_key_is_said_beside_the_other_problems() -> None:
    values = values_with(lambda v: v.update({"prometheus.timeout": "5s"}), set_path("analysis.threshold", 0))
    found = {p.field for p in problems(values)}
    assert found == {"prometheus.timeout", "analysis.threshold"}


def test_a_stack_file_the_engine_did_not_read_does_not_speak_for_its_values() -> None:
    # `pulumi up --config-file other.yaml`: the program read Pulumi.<stack>.yaml all the same, and refused an
    # `up` for a plain header the engine was not given (or let pass one it was, in the other file)
    values = values_with(set_path("prometheus.token", SECRET), set_path("prometheus.headers", {"X-Scope-OrgID": "shop"}))
    config = {key: ConfigValue(value=json.dumps(value) if not isinstance(value, str) else value, secret=key == "canary:prometheus")
              for key, value in _config(values).items()}
    stale = {**_config(values), "canary:prometheus": {**values["prometheus"], "token": stackconfig.ENCRYPTED,
                                                      "headers": {"X-Scope-OrgID": "shop-old"}}}
    assert stackconfig.from_config(config, stack_file=stale).prometheus is not None
    stale["canary:prometheus"]["headers"] = {"X-Other": "shop"}
    assert stackconfig.from_config(config, stack_file=stale).prometheus is not None


# --- rules newer than a release in flight: noted in its snapshot and its own `up`s, refused anywhere else -----------

DEAD_LIVENESS = {"livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}}}
DEAD_LIVENESS_PORT = "app.template.spec.containers[0].livenessProbe.httpGet.port"


def test_a_probe_on_a_port_name_its_container_does_not_declare_is_refused_naming_the_field() -> None:
    # a release cannot begin with it: the kubelet discards the probe's errors, so the liveness probe is silently dead
    found = problems(values_with(_template(**DEAD_LIVENESS)))
    assert [(p.field, p.value) for p in found] == [(DEAD_LIVENESS_PORT, "'health'")]
    assert "must name a port of its own container (web declares the port names http)" in found[0].rule
    with pytest.raises(InvalidSpec, match="livenessProbe.httpGet.port"):
        stackconfig.from_config(_config(values_with(_template(**DEAD_LIVENESS))))


def test_a_snapshot_or_in_release_up_with_a_dead_liveness_port_name_is_only_noted() -> None:
    # a template the API server took (the stable may well run with it) began a release before the rule: refused in its
    # snapshot and in its own config, every `up` of it failed, its rollback's too, traffic left on the canary
    from canary.core import spec

    app = spec.App.model_validate({"name": "web", "namespace": "prod", "template": pod_template(**DEAD_LIVENESS)})
    with spec.newer_rules_noted() as noted:  # what a resume's snapshot and a release's own `up` read the config under
        assert spec.app_problems(app, "app") == []
        parsed = stackconfig.from_config(_config(values_with(_template(**DEAD_LIVENESS))), placed=False)
    assert parsed.app is not None and parsed.app.template == pod_template(**DEAD_LIVENESS)
    assert [p.field for p in noted] == ["app.template.spec.containers[0].livenessProbe.httpGet.port", DEAD_LIVENESS_PORT]
    assert [p.field for p in spec.app_problems(app, "app")] == [DEAD_LIVENESS_PORT]  # refused again once it is off


def test_a_template_error_the_api_server_refuses_is_refused_in_a_release_in_flight_too() -> None:
    # only the rules newer than the release are noted: a port number written as text was never taken by the API server
    from canary.core import spec

    with spec.newer_rules_noted() as noted, pytest.raises(InvalidSpec, match="is a number written as text"):
        stackconfig.from_config(_config(values_with(_template(readinessProbe={"httpGet": {"port": "8080"}}))), placed=False)
    assert noted == []


@pytest.mark.parametrize("given", ["kubernetes.io/h2c", "kubernetes.io/ws", "http", "HTTPS", "example.com/my-protocol_v2.1"])
def test_an_app_protocol_as_kubernetes_takes_it_is_accepted(given: str) -> None:
    assert parse_stack(values_with(set_path("app.appProtocol", given))).app_configs()["web"].app.app_protocol == given  # type: ignore[union-attr]


@pytest.mark.parametrize("given", ["kubernetes.io/", "/h2c", "h2c/", "Kubernetes.IO/h2c", "-h2c", "h2 c", "x" * 64, "a/b/c", ""])
def test_an_app_protocol_the_api_server_would_refuse_is_refused_naming_the_field(given: str) -> None:
    # refused at validation, not halfway through an up by the API server (stable's Service first, the canary's not)
    found = {p.field: p.rule for p in problems(values_with(set_path("app.appProtocol", given)))}
    assert "app.appProtocol" in found and "application protocol" in found["app.appProtocol"], found
