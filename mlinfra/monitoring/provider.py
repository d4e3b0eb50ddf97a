"""DataCollection's storage side: the container (created if absent) and the validity window of a scoped, expiring
credential — a container SAS allowing create/write only — for the scoring servers; a folder for local runs.

The provider's state holds neither the account key nor the SAS, only when it expires: the SAS is a deterministic HMAC
of the key, the container, the permissions and that time, computed in the program by :func:`container_sas` as a
Pulumi secret. A secret that is never in a provider's outputs cannot reach a checkpoint in plain text, whatever the engine
does between a step and its secret marking (a CI run once found both in a file-backend checkpoint)."""

from __future__ import annotations

import os
import re
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pulumi import ResourceOptions
from pulumi.dynamic import (
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from mlinfra.errors import CollectionError
from mlinfra.observed import say_drift


def parse_storage(uri: str) -> dict[str, str]:
    u = urllib.parse.urlparse(uri)
    if u.scheme == "file":
        if not u.path.startswith("/"):
            raise CollectionError(f"storage {uri!r}: a folder must be absolute, file:///abs/path")
        return {"kind": "file", "path": u.path}
    if u.scheme == "azblob":
        parts = u.path.strip("/").split("/", 1)
        if not u.netloc or not parts[0]:
            raise CollectionError(f"storage {uri!r}: use azblob://ACCOUNT/CONTAINER[/PREFIX][?endpoint=URL]")
        endpoint = (
            dict(urllib.parse.parse_qsl(u.query)).get("endpoint")
            or f"https://{u.netloc}.blob.core.windows.net"
        )
        if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", parts[0]):
            raise CollectionError(
                f"storage {uri!r}: container {parts[0]!r} must be 3-63 lowercase letters, digits and single hyphens"
            )
        return {
            "kind": "azblob",
            "account": u.netloc,
            "container": parts[0],
            "prefix": parts[1] if len(parts) > 1 else "",
            "endpoint": endpoint,
        }
    raise CollectionError(
        f"storage {uri!r}: use azblob://ACCOUNT/CONTAINER[/PREFIX]?endpoint=URL or file:///folder"
    )


SAS_PERMISSIONS = "acw"
"""add, create, write: a server can append records, never read, list or delete them."""

_STAMP = "%Y-%m-%dT%H:%M:%SZ"


def container_sas(
    uri: str, account_key: str | None, expires: str | None, permissions: str = SAS_PERMISSIONS
) -> str:
    """The write-only container SAS valid until ``expires`` (the UTC stamp :func:`provision` returns); the same inputs
    always give the same token. No start time: valid from issue, so clock skew with the storage can't make a fresh
    token "not yet valid". "" for folders, or without a key or expiry."""
    s = parse_storage(uri)
    if s["kind"] == "file" or not expires or not account_key:
        return ""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(
        s["account"],
        s["container"],
        account_key=account_key,
        permission=ContainerSasPermissions.from_string(permissions),
        expiry=datetime.strptime(expires, _STAMP).replace(tzinfo=UTC),
    )


def provision(uri: str, account_key: str | None, ttl_hours: float) -> dict[str, Any]:
    """Create the container if absent; return {container_uri, expires} — when the SAS expires ("" for folders)."""
    s = parse_storage(uri)
    if s["kind"] == "file":
        Path(s["path"]).mkdir(parents=True, exist_ok=True)
        # "" rather than None: a None output reads as unknown in previews, which would show the endpoint as changing.
        return {"container_uri": f"file://{s['path']}", "expires": ""}
    from azure.core.exceptions import (
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
    )
    from azure.storage.blob import (
        BlobServiceClient,
        ExponentialRetry,
    )

    if not account_key:
        raise CollectionError(
            f"storage account {s['account']!r} needs its account key (storage_credential, a secret) to create the "
            "container and issue SAS tokens"
        )
    client = BlobServiceClient(
        s["endpoint"],
        credential={"account_name": s["account"], "account_key": account_key},
        retry_policy=ExponentialRetry(
            initial_backoff=1, increment_base=1, retry_total=2, random_jitter_range=1
        ),
    )
    try:
        client.get_container_client(s["container"]).create_container()
    except ResourceExistsError:
        pass
    except ClientAuthenticationError:
        raise CollectionError(
            f"storage account {s['account']!r} at {s['endpoint']} refused the credential: check storage_credential "
            "(the account key)"
        ) from None
    except HttpResponseError as e:
        if e.status_code == 403:
            raise CollectionError(
                f"storage account {s['account']!r} at {s['endpoint']} refused the credential (403): check "
                "storage_credential (the account key)"
            ) from None
        raise CollectionError(f"storage account {s['account']!r}: {e.reason} ({e.status_code})") from None
    except (AzureError, ValueError) as e:
        raise CollectionError(
            f"storage account {s['account']!r} at {s['endpoint']} is unreachable: {type(e).__name__}"
        ) from None
    return {
        "container_uri": f"{s['endpoint'].rstrip('/')}/{s['container']}",
        "expires": (datetime.now(UTC) + timedelta(hours=ttl_hours)).strftime(_STAMP),
    }


def _outs(props: dict[str, Any], provisioned: dict[str, Any]) -> dict[str, Any]:
    """The outputs: the inputs without the account key, and what was provisioned (no secret at all). ``sas`` is "":
    only state written before the SAS moved into the program holds one."""
    return {
        **{k: v for k, v in props.items() if k != "storage_credential"},
        **provisioned,
        "sas": "",  # not None: a None output reads as unknown in previews (the endpoint would show a new SAS)
        "observed": dict(HEALTHY),
    }


RENEW_FRACTION = 0.1
"""A SAS with less than this fraction of its lifetime left is renewed by the next `up` after a refresh."""


def _container_exists(s: dict[str, str]) -> bool | None:
    """Whether the Azure container exists, checked with $MLINFRA_COLLECT_CREDENTIAL (account key, or a SAS that
    may read the container); None when there is no credential here (the state holds none: see the module doc)."""
    cred = os.environ.get("MLINFRA_COLLECT_CREDENTIAL")
    if not cred:
        return None
    from azure.core.exceptions import AzureError
    from azure.storage.blob import ContainerClient

    is_sas = cred.lstrip("?").startswith(("sv=", "se=", "sp=", "st="))
    credential: Any = cred.lstrip("?") if is_sas else {"account_name": s["account"], "account_key": cred}
    try:
        return bool(ContainerClient(s["endpoint"], s["container"], credential=credential).exists())
    except (AzureError, ValueError) as e:
        raise CollectionError(
            f"storage account {s['account']!r} at {s['endpoint']}: could not check container {s['container']!r} "
            f"({type(e).__name__}): check $MLINFRA_COLLECT_CREDENTIAL"
        ) from None


def observe(props: dict[str, Any], now: datetime | None = None) -> dict[str, str]:
    """The storage as it is: ``container`` present/missing (omitted when it can't be checked here) and ``sas``
    valid / expiring / expired — an expired SAS silently stops every server's uploads."""
    s = parse_storage(props["storage"])
    out: dict[str, str] = {}
    if s["kind"] == "file":
        out["container"] = "present" if Path(s["path"]).is_dir() else "missing"
        out["sas"] = "valid"  # a folder needs none
        return out
    exists = _container_exists(s)
    if exists is not None:
        out["container"] = "present" if exists else "missing"
    expires = props.get("expires")
    if not expires:
        out["sas"] = "valid"
        return out
    left = datetime.strptime(expires, _STAMP).replace(tzinfo=UTC) - (now or datetime.now(UTC))
    lifetime = timedelta(hours=float(props["ttl_hours"]))
    if left <= timedelta(0):
        out["sas"] = f"expired at {expires}"
    elif left < lifetime * RENEW_FRACTION:
        out["sas"] = f"expires at {expires}, under {RENEW_FRACTION:.0%} of its lifetime left"
    else:
        out["sas"] = "valid"
    return out


HEALTHY = {"container": "present", "sas": "valid"}


def drift(observed: dict[str, str] | None) -> list[str]:
    """What an observation reports short of :data:`HEALTHY`, as ``key: value`` phrases."""
    return [f"{k}: {v}" for k, v in sorted((observed or {}).items()) if HEALTHY.get(k) != v]


class CollectionStorageProvider(ResourceProvider):
    KEYS = ("storage", "ttl_hours", "rotation")

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        # What `up` brings the storage to; after a refresh found drift, preview shows observed → this.
        return CheckResult({**news, "observed": dict(HEALTHY)}, [])

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """`pulumi refresh`: the container and the SAS's time left, as ``observed``."""
        observed = observe(props)
        found = drift(observed)
        if found:
            say_drift(
                f"data collection {props['storage']}",
                "; ".join(found),
                "`pulumi up` creates the container and issues a new SAS; collecting endpoints roll to it",
            )
        return ReadResult(id_, {**props, "observed": observed})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in self.KEYS if olds.get(k) != news.get(k)]
        drifted = bool(news.get("observed")) and bool(drift(olds.get("observed")))
        return DiffResult(
            changes=bool(changed) or drifted, replaces=["storage"] if "storage" in changed else []
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        out = provision(props["storage"], props.get("storage_credential"), float(props["ttl_hours"]))
        return CreateResult(id_=props["storage"], outs=_outs(props, out))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        out = provision(news["storage"], news.get("storage_credential"), float(news["ttl_hours"]))
        return UpdateResult(outs=_outs(news, out))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Collected data is a record: the container and its blobs stay."""


class CollectionStorage(Resource):
    def __init__(self, name: str, props: dict[str, Any], opts: ResourceOptions | None = None):
        super().__init__(CollectionStorageProvider(), name, props, opts)
