"""The shop's web app as the team deploys it before canary: a rolling update puts every new image in front of all users at once.

A Namespace, the app's settings (a ConfigMap mounted as files) and credentials (a Secret read as
environment), a Deployment of two pods, the Service in front of them (with a metrics port and the label
a ServiceMonitor selects), and the HTTPRoute that makes the Service reachable through the cluster's
Gateway. ``__main__.py`` is this program after adopting canary.
"""

import pulumi
import pulumi_kubernetes as k8s

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

deployment = k8s.apps.v1.Deployment(
    "web",
    metadata={"name": "web", "namespace": namespace},
    spec=k8s.apps.v1.DeploymentSpecArgs(replicas=2, selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels), template=template),
    opts=pulumi.ResourceOptions(depends_on=[config_map, secret]),
)
service = k8s.core.v1.Service(  # labelled for the ServiceMonitor that scrapes its metrics port
    "web",
    metadata={"name": "web", "namespace": namespace, "labels": labels},
    spec={"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "metrics", "port": 9090, "targetPort": "http"}]},
    opts=pulumi.ResourceOptions(depends_on=[ns]),
)
k8s.apiextensions.CustomResource(
    "web",
    api_version="gateway.networking.k8s.io/v1",
    kind="HTTPRoute",
    metadata={"name": "web", "namespace": namespace},
    spec={"parentRefs": [gateway], "hostnames": [hostname], "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]},
    opts=pulumi.ResourceOptions(depends_on=[service]),
)
