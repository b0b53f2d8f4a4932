"""The shop's web app, released by canary: each new image gets a share of the traffic, step by step, while its metrics hold.

The same program as ``before.py``, with the Deployment, the Service and the HTTPRoute replaced by one
CanaryDeployment that takes the same pod template; ``adopt`` moves the running ones under it without
downtime (see README.md).
"""

import pulumi
import pulumi_kubernetes as k8s

from canary.component import CanaryDeployment

config = pulumi.Config()
namespace = config.get("namespace") or "shop"
gateway = config.require_object("gateway")  # the route's parentRef: {name, namespace, sectionName}
hostname = config.require("hostname")

ns = k8s.core.v1.Namespace("shop", metadata={"name": namespace})
settings = {"greeting": "hello from the shop"}
credentials = {"API_TOKEN": config.require_secret("apiToken")}
config_map = k8s.core.v1.ConfigMap("web-config", metadata={"name": "web-config", "namespace": namespace}, data=settings,
                                   opts=pulumi.ResourceOptions(depends_on=[ns]))
secret = k8s.core.v1.Secret("web-secrets", metadata={"name": "web-secrets", "namespace": namespace}, string_data=credentials,
                            opts=pulumi.ResourceOptions(depends_on=[ns]))

labels = {"app": "web"}
template = k8s.core.v1.PodTemplateSpecArgs(
    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
    spec=k8s.core.v1.PodSpecArgs(
        containers=[k8s.core.v1.ContainerArgs(
            name="web",
            image=config.require("image"),
            ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=8080)],
            readiness_probe=k8s.core.v1.ProbeArgs(http_get=k8s.core.v1.HTTPGetActionArgs(path="/healthz", port="http"), period_seconds=1),
            env_from=[k8s.core.v1.EnvFromSourceArgs(secret_ref=k8s.core.v1.SecretEnvSourceArgs(name="web-secrets"))],
            volume_mounts=[k8s.core.v1.VolumeMountArgs(name="settings", mount_path="/etc/web")],
        )],
        volumes=[k8s.core.v1.VolumeArgs(name="settings", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name="web-config"))],
    ),
)

CanaryDeployment(
    "web",
    app={"name": "web", "namespace": namespace, "replicas": 2},
    gateway={"parentRefs": [gateway], "hostnames": [hostname]},
    template=template,
    config_maps={"web-config": settings},
    secrets={"web-secrets": credentials},
    # what the Service declared beside its http port, which the adoption would otherwise remove: its label, its metrics port
    service={"metadata": {"labels": labels}, "spec": {"ports": [{"name": "metrics", "port": 9090, "targetPort": "http"}]}},
    # what the program declared as "web" before: the Deployment that web-stable replaces, the Service and the route it takes over
    adopt={"deployment": "web", "service": "web", "route": "web"},
    image_config="shop:image",  # `canary release STACK --image …` sets this key
    opts=pulumi.ResourceOptions(depends_on=[ns]),
)
