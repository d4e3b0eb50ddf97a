"""mlinfra's components for every Pulumi language: a multi-language component package.

Pulumi YAML, TypeScript, Go, .NET and Java programs use mlinfra through this package (``mlinfra:index:<Component>``;
the schema is inferred by Pulumi's Python component-provider host from the annotations below). Each component here
takes the language-neutral arguments a schema can carry (strings, numbers, lists, maps) and builds the Python
component of the same name as its child, so state, diffs and previews are the same as from a Python program.

The plugin folder is this package's directory (``PulumiPlugin.yaml``, ``__main__.py``); see docs/multi-language.md.
"""

from typing import NotRequired, TypedDict

import pulumi

from mlinfra.endpoints.cloud_endpoint import CloudEndpoint as _CloudEndpoint
from mlinfra.endpoints.cloud_endpoint import CloudEndpointArgs as _CloudEndpointArgs
from mlinfra.endpoints.cloud_endpoint import Deployment as _Deployment
from mlinfra.endpoints.cloud_endpoint import Kubernetes as _Kubernetes
from mlinfra.endpoints.cloud_endpoint import LocalDocker as _LocalDocker
from mlinfra.errors import UserError
from mlinfra.images.scoring_image import ScoringImage as _ScoringImage
from mlinfra.images.scoring_image import ScoringImageArgs as _ScoringImageArgs
from mlinfra.monitoring.data_collection import DataCollection as _DataCollection
from mlinfra.monitoring.data_collection import DataCollectionArgs as _DataCollectionArgs
from mlinfra.registry.registered_model import RegisteredModel as _RegisteredModel
from mlinfra.registry.registered_model import RegisteredModelArgs as _RegisteredModelArgs

PACKAGE = "mlinfra"
__version__ = "0.1.0"


def _child(parent: pulumi.ComponentResource) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent)


class RegisteredModelArgs(TypedDict):
    path: str
    """Local model file (ONNX) or folder to register."""
    model_name: NotRequired[str]
    """Name in the registry. Default: the resource name."""
    registry: NotRequired[str]
    """Registry URI (file://, azblob://). Default: mlinfra:registry config, else the local folder registry."""
    description: NotRequired[str]
    """Free text kept with the version."""
    tags: NotRequired[dict[str, str]]
    """Searchable tags of the version."""


class RegisteredModel(pulumi.ComponentResource):
    """Register a model version (immutable, content-addressed): a new file content is a new version."""

    model_name: pulumi.Output[str]
    """The model's name in the registry."""
    version: pulumi.Output[int]
    """The version registered."""
    ref: pulumi.Output[str]
    """``name:version``: what ScoringImage's ``models`` takes."""
    sha256: pulumi.Output[str]
    """Content hash of the version."""
    uri: pulumi.Output[str]
    """Where the version's files are."""

    def __init__(self, name: str, args: RegisteredModelArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlinfra:index:RegisteredModel", name, {}, opts)
        model = _RegisteredModel(
            name,
            _RegisteredModelArgs(
                path=args["path"],
                model_name=args.get("model_name"),
                registry=args.get("registry"),
                description=args.get("description") or "",
                tags=dict(args.get("tags") or {}),
            ),
            _child(self),
        )
        self.model_name = model.model_name
        self.version = model.version
        self.ref = pulumi.Output.concat(model.model_name, ":", model.version.apply(str))
        self.sha256 = model.sha256
        self.uri = model.uri
        self.register_outputs(
            {"model_name": self.model_name, "version": self.version, "ref": self.ref, "sha256": self.sha256}
        )


class ScoringImageArgs(TypedDict):
    models: pulumi.Input[list[pulumi.Input[str]]]
    """``name:version`` refs of registered models (a RegisteredModel's ``ref``)."""
    model_registry: NotRequired[str]
    """Registry of the refs. Default: mlinfra:registry config, else the local folder registry."""
    repository: NotRequired[str]
    """Target host[:port]/path. Default: <local registry>/mlinfra/<resource name>."""
    script: NotRequired[str]
    """Azure ML-style scoring script (init(), run(raw_data)). Default: the server's ONNX call."""
    requirements: NotRequired[list[str]]
    """Extra pip requirements."""
    dockerfile: NotRequired[str]
    """Your own Dockerfile, built by BuildKit through a docker-build Image child."""
    tag: NotRequired[str]
    """An extra mutable tag to push."""


class ScoringImage(pulumi.ComponentResource):
    """Package registered models with the scoring server as an OCI image, addressed by digest."""

    image_ref: pulumi.Output[str]
    """registry/repository@sha256:…"""
    digest: pulumi.Output[str]
    """The image's manifest digest."""

    def __init__(self, name: str, args: ScoringImageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlinfra:index:ScoringImage", name, {}, opts)
        models = args["models"]
        if not isinstance(models, list):
            raise UserError(
                f"ScoringImage {name}: models must be a list of name:version refs, not one computed value"
            )
        image = _ScoringImage(
            name,
            _ScoringImageArgs(
                models=list(models),
                model_registry=args.get("model_registry"),
                repository=args.get("repository"),
                script=args.get("script"),
                requirements=list(args.get("requirements") or []),
                dockerfile=args.get("dockerfile"),
                tag=args.get("tag"),
            ),
            _child(self),
        )
        self.image_ref = image.image_ref
        self.digest = image.digest
        self.register_outputs({"image_ref": self.image_ref, "digest": self.digest})


class DataCollectionArgs(TypedDict):
    storage: NotRequired[str]
    """azblob://ACCOUNT/CONTAINER[/PREFIX]?endpoint=URL or file:///folder. Default: the stack's
    mlinfra:collectionStorage config, else the project's .mlinfra/collected. The account key is the stack's secret
    config mlinfra:collectionCredential (never a plain input)."""
    sample_rate: NotRequired[float]
    """Share of scored requests captured, in [0, 1]. Default: 1."""
    capture: NotRequired[list[str]]
    """"inputs", "outputs" or both (the default)."""
    headers: NotRequired[list[str]]
    """Request headers recorded with each record (never Authorization)."""
    otlp_endpoint: NotRequired[str]
    """Also export metrics and request traces over OTLP/HTTP to this collector."""


class CloudEndpointArgs(TypedDict):
    image: pulumi.Input[str]
    """The image to serve (a ScoringImage's ``image_ref``)."""
    replicas: NotRequired[int]
    """Replicas of the deployment. Default: 1."""
    auth: NotRequired[str]
    """"key" (bearer keys, default) or "none"."""
    port: NotRequired[int]
    """Local Docker: the router's port on 127.0.0.1. Default: a free port, kept."""
    kubeconfig: NotRequired[str]
    """Deploy to this Kubernetes cluster (path or content) instead of Local Docker."""
    namespace: NotRequired[str]
    """Kubernetes namespace. Default: the endpoint's name."""
    endpoint_name: NotRequired[str]
    """Default: <resource name>-<stack>."""
    env: NotRequired[dict[str, str]]
    """Extra environment of the scoring servers."""
    data_collection: NotRequired[DataCollectionArgs]
    """Capture sampled inputs/outputs to blob storage (a DataCollection child, ``<name>-collection``)."""


class CloudEndpoint(pulumi.ComponentResource):
    """Serve an image as an authenticated web service (REST and gRPC, Open Inference Protocol)."""

    scoring_uri: pulumi.Output[str]
    """POST inference requests here."""
    openapi_uri: pulumi.Output[str]
    """The endpoint's OpenAPI document."""
    grpc_uri: pulumi.Output[str]
    """host:port of the gRPC service."""
    primary_key: pulumi.Output[str]
    """Bearer key (a secret)."""
    collected_to: pulumi.Output[str]
    """Where the data collection writes (its container URI); empty without one."""

    def __init__(self, name: str, args: CloudEndpointArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlinfra:index:CloudEndpoint", name, {}, opts)
        target: _LocalDocker | _Kubernetes = _LocalDocker(port=args.get("port"))
        if args.get("kubeconfig"):
            target = _Kubernetes(kubeconfig=args.get("kubeconfig"), namespace=args.get("namespace"))
        collection = None
        wanted = args.get("data_collection")
        if wanted is not None:
            if not isinstance(wanted, dict):
                raise UserError(
                    f"CloudEndpoint {name}: data_collection must be an object of literal settings"
                )
            collection = _DataCollection(
                f"{name}-collection",
                _DataCollectionArgs(
                    storage=wanted.get("storage"),
                    sample_rate=wanted.get("sample_rate", 1.0),
                    capture=list(wanted.get("capture") or ["inputs", "outputs"]),
                    headers=list(wanted.get("headers") or []),
                    otlp_endpoint=wanted.get("otlp_endpoint"),
                ),
                _child(self),
            )
        endpoint = _CloudEndpoint(
            name,
            _CloudEndpointArgs(
                deployments={
                    "main": _Deployment(
                        image=args["image"],
                        replicas=int(args.get("replicas") or 1),
                        env=dict(args.get("env") or {}),
                    )
                },
                target=target,
                auth=args.get("auth") or "key",
                endpoint_name=args.get("endpoint_name"),
                data_collection=collection,
            ),
            _child(self),
        )
        self.scoring_uri = endpoint.scoring_uri
        self.openapi_uri = endpoint.openapi_uri
        self.grpc_uri = endpoint.grpc_uri.apply(lambda u: u or "")
        self.primary_key = endpoint.primary_key.apply(lambda k: k or "")
        self.collected_to = (
            collection.container_uri if collection is not None else pulumi.Output.from_input("")
        )
        self.register_outputs(
            {
                "scoring_uri": self.scoring_uri,
                "openapi_uri": self.openapi_uri,
                "primary_key": self.primary_key,
            }
        )


COMPONENTS: list[type[pulumi.ComponentResource]] = [RegisteredModel, ScoringImage, CloudEndpoint]
