"""``python -m canary``: the same as the ``canary`` console script."""

from canary.cli import run

run()
