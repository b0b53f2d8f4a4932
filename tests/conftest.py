"""Shared fixtures: the project's paths and a valid base config to derive invalid cases from."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def base_values() -> dict[str, Any]:
    """A minimal valid stack config (top-level keys, no namespace)."""
    return copy.deepcopy(
        {
            "app": {"name": "web", "namespace": "prod", "port": 8080, "replicas": 2},
            "gateway": {"parentRefs": [{"name": "public", "namespace": "gateway"}], "hostnames": ["web.example.com"]},
            "stableImage": "registry.example.com/shop/web:1.0.0",
            "prometheus": {"address": "http://prometheus.monitoring:9090"},
            "metricTemplates": {
                "error-rate": {
                    "provider": {"type": "prometheus"},
                    "query": 'sum(rate(x{pod=~"{{ target }}",ns="{{ namespace }}",le="{{ variables.le }}"}[{{ interval }}]))',
                }
            },
            "analysis": {
                "interval": "1m",
                "threshold": 3,
                "stepWeight": 10,
                "maxWeight": 50,
                "metrics": [
                    {"name": "error-rate", "templateRef": {"name": "error-rate"}, "thresholdRange": {"max": 1}, "templateVariables": {"le": "0.5"}},
                    {"name": "request-duration", "thresholdRange": {"max": 500}},
                ],
                "webhooks": [{"name": "load-test", "type": "rollout", "cmd": "hey -z 10s http://web-canary.prod/"}],
            },
        }
    )


@pytest.fixture
def values() -> dict[str, Any]:
    return base_values()
