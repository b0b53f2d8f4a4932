"""Entry of `pulumi up` for this project: one CanaryDeployment per app its stack config declares.

Whatever the stack config holds is applied idempotently; invalid config stops here, before any
resource is registered. A team's own program instantiates CanaryDeployment itself (see examples/).
"""

from canary.component import program

program()
