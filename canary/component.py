"""For Pulumi programs: the ``CanaryDeployment`` component, and the project's own program.

    import pulumi_kubernetes as k8s
    from canary.component import CanaryDeployment

    CanaryDeployment("web", app={"name": "web", "namespace": "shop", "replicas": 3},
                     gateway={"parentRefs": [{"name": "public", "namespace": "gateway"}]},
                     template=k8s.core.v1.PodTemplateSpecArgs(...))

The component and its contract are described in ``canary.adapters.program``.
"""

from canary.adapters.program import CanaryDeployment, desired_template, program

__all__ = ["CanaryDeployment", "desired_template", "program"]
