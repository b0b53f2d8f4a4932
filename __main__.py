"""Entry point of `pulumi up`: read the stack config, validate it into the spec, declare the resources.

Whatever the stack config holds is applied idempotently: the initial deploy, a
manual weight, or the stable state after a release. Invalid config stops here,
before any resource is registered.
"""

import pulumi

from canary.errors import InvalidSpec
from canary.program import program, spec_from_pulumi_config

try:
    spec = spec_from_pulumi_config()
except InvalidSpec as exc:
    raise pulumi.RunError(str(exc)) from None
program(spec)
