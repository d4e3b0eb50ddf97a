"""Key/value object stores behind the model registry: a local folder and Azure Blob Storage.

Both give the registry the same four guarantees it is built on:

- ``put_if_absent``: create a key only if it does not exist (Azure ``If-None-Match: *``; locally an atomic
  ``link()`` of a finished temp file). Two writers racing for a key: exactly one wins.
- ``put_if_match``: overwrite only if nobody changed the key since we read it (etags).
- ``upload_file``: a large object streamed in blocks, hashed while it streams, and visible only once complete
  (Azure commits the block list at the end; locally a rename). A killed upload leaves nothing visible.
- listing by prefix.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from mlinfra.errors import ContentMismatch, ModelRegistryError

Progress = Callable[[int, int], None]  # (bytes done, total)
BLOCK = 4 * 1024 * 1024


class Store(Protocol):
    @property
    def uri(self) -> str: ...

    def get(self, key: str) -> tuple[bytes, str] | None: ...
    def put_if_absent(self, key: str, data: bytes) -> bool: ...
    def put_if_match(self, key: str, data: bytes, etag: str) -> bool: ...
    def put(self, key: str, data: bytes) -> None: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int | None: ...
    def list(self, prefix: str) -> list[str]: ...
    def upload_file(self, key: str, path: Path, sha256: str, progress: Progress | None = None) -> None: ...
    def open_read(self, key: str) -> Iterator[bytes]: ...
    def check(self) -> None: ...


class _HashingReader:
    """A non-seekable reader that hashes what it hands out (so uploads read sequentially, memory bounded)."""

    def __init__(self, f: IO[bytes], total: int, progress: Progress | None):
        self._f = f
        self.sha = hashlib.sha256()
        self.done = 0
        self.total = total
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size if size and size > 0 else BLOCK)
        self.sha.update(data)
        self.done += len(data)
        if self._progress:
            self._progress(self.done, self.total)
        return data

    def readable(self) -> bool:
        return True


# ---------------------------------------------------------------------------------------------------------------


@dataclass
class LocalStore:
    """Objects as files under ROOT; keys are relative paths."""

    root: Path

    @property
    def uri(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root.resolve() not in p.parents:
            raise ModelRegistryError(f"key {key!r} escapes the registry root {self.root}")
        return p

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ModelRegistryError(f"registry {self.uri} is not writable: {e.strerror}") from None

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def _tmp(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._tmp(path, data)
        try:
            os.link(tmp, path)  # atomic: fails if the key exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        import fcntl

        path = self._path(key)
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        lock = locks / hashlib.sha256(key.encode()).hexdigest()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            current = self.get(key)
            if current is None or current[1] != etag:
                return False
            tmp = self._tmp(path, data)
            os.replace(tmp, path)
            return True

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.replace(self._tmp(path, data), path)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None if it is absent."""
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        out = []
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if d != ".locks"]
            for f in files:
                if f.startswith(".tmp-") or f.endswith(".lock") or f.startswith(".probe-"):
                    continue
                out.append(str(Path(dirpath, f).relative_to(self.root)))
        return sorted(out)

    def upload_file(self, key: str, path: Path, sha256: str, progress: Progress | None = None) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            with open(path, "rb") as src, open(tmp, "wb") as out:
                reader = _HashingReader(src, os.path.getsize(path), progress)
                while chunk := reader.read(BLOCK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if reader.sha.hexdigest() != sha256:
                raise ContentMismatch(f"{path} changed while it was being registered (sha256 differs): retry")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def open_read(self, key: str) -> Iterator[bytes]:
        try:
            f = open(self._path(key), "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise ModelRegistryError(f"registry {self.uri} has no object {key}") from None
        with f:
            while chunk := f.read(BLOCK):
                yield chunk


# ---------------------------------------------------------------------------------------------------------------


@dataclass
class AzureBlobStore:
    """Objects as block blobs in CONTAINER under PREFIX. Credential: an account key, a SAS token or a connection
    string; it is never put in messages."""

    account: str
    container: str
    prefix: str
    endpoint: str
    credential: str | None = None
    _cc: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def uri(self) -> str:
        q = (
            ""
            if self.endpoint == f"https://{self.account}.blob.core.windows.net"
            else f"?endpoint={self.endpoint}"
        )
        return f"azblob://{self.account}/{self.container}{'/' + self.prefix if self.prefix else ''}{q}"

    def _container(self) -> Any:
        from azure.storage.blob import ContainerClient

        if self._cc is None:
            cred = self.credential
            from azure.storage.blob import ExponentialRetry

            # The storage SDK's default retry waits 15 s, 60 s, ...: a down registry should fail in seconds.
            retry = ExponentialRetry(
                initial_backoff=1, increment_base=1, retry_total=2, random_jitter_range=1
            )
            kwargs: dict[str, Any] = {
                "retry_policy": retry,
                "connection_timeout": 5,
                "read_timeout": 60,
                "max_block_size": BLOCK,
                "max_single_put_size": BLOCK,
            }
            if cred and ("AccountKey=" in cred or "SharedAccessSignature=" in cred):
                cc = ContainerClient.from_connection_string(cred, self.container, **kwargs)
            elif cred and cred.lstrip("?").startswith(("sv=", "se=", "sp=", "st=")):
                cc = ContainerClient(self.endpoint, self.container, credential=cred.lstrip("?"), **kwargs)
            elif cred:
                cc = ContainerClient(
                    self.endpoint,
                    self.container,
                    credential={"account_name": self.account, "account_key": cred},
                    **kwargs,
                )
            else:
                cc = ContainerClient(self.endpoint, self.container, **kwargs)
            self._cc = cc
        return self._cc

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _err(self, e: Exception, what: str) -> ModelRegistryError:
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

        if isinstance(e, ClientAuthenticationError) or (
            isinstance(e, HttpResponseError) and e.status_code == 403
        ):
            if not self.credential:
                return ModelRegistryError(
                    f"registry {self.uri} needs a credential (HTTP 403 while {what}): give its account key, SAS "
                    "token or connection string (registry_credential, or $MLINFRA_REGISTRY_CREDENTIAL)"
                )
            return ModelRegistryError(
                f"registry {self.uri} refused the credential while {what} (HTTP 403): check the account key, "
                "SAS token or connection string given for it"
            )
        if isinstance(e, ServiceRequestError):
            return ModelRegistryError(f"registry {self.uri} is unreachable at {self.endpoint} while {what}")
        if isinstance(e, HttpResponseError):
            return ModelRegistryError(
                f"registry {self.uri} refused {what}: HTTP {e.status_code} {getattr(e, 'error_code', '')}"
            )
        return ModelRegistryError(f"registry {self.uri}: {what} failed: {type(e).__name__}")

    def check(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            self._container().create_container()
        except ResourceExistsError:
            pass
        except Exception as e:
            raise self._err(e, "opening the container") from None

    def get(self, key: str) -> tuple[bytes, str] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            d = self._container().download_blob(self._key(key))
            return d.readall(), str(d.properties.etag)
        except ResourceNotFoundError:
            return None
        except Exception as e:
            raise self._err(e, f"reading {key}") from None

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        try:
            self._container().upload_blob(self._key(key), data, overwrite=False)
            return True
        except (ResourceExistsError, ResourceModifiedError):
            return False
        except Exception as e:
            raise self._err(e, f"creating {key}") from None

    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            self._container().upload_blob(
                self._key(key), data, overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified
            )
            return True
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        except Exception as e:
            if getattr(e, "status_code", None) == 412:
                return False
            raise self._err(e, f"updating {key}") from None

    def put(self, key: str, data: bytes) -> None:
        try:
            self._container().upload_blob(self._key(key), data, overwrite=True)
        except Exception as e:
            raise self._err(e, f"writing {key}") from None

    def delete(self, key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._container().delete_blob(self._key(key))
        except ResourceNotFoundError:
            pass  # already gone: deleting is idempotent, as in the folder store
        except Exception as e:
            raise self._err(e, f"deleting {key}") from None

    def exists(self, key: str) -> bool:
        try:
            return bool(self._container().get_blob_client(self._key(key)).exists())
        except Exception as e:
            raise self._err(e, f"checking {key}") from None

    def size(self, key: str) -> int | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return int(self._container().get_blob_client(self._key(key)).get_blob_properties().size)
        except ResourceNotFoundError:
            return None
        except Exception as e:
            raise self._err(e, f"checking {key}") from None

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix)
        cut = len(self.prefix) + 1 if self.prefix else 0
        try:
            return sorted(b.name[cut:] for b in self._container().list_blobs(name_starts_with=full))
        except Exception as e:
            raise self._err(e, f"listing {prefix}") from None

    def upload_file(self, key: str, path: Path, sha256: str, progress: Progress | None = None) -> None:
        from azure.core.exceptions import ResourceExistsError

        size = os.path.getsize(path)
        with open(path, "rb") as f:
            reader = _HashingReader(f, size, progress)
            try:
                # Blocks are staged and the block list committed at the end: the blob exists only when complete.
                self._container().upload_blob(
                    self._key(key), reader, length=size, overwrite=False, max_concurrency=4
                )
            except ResourceExistsError:
                return  # content-addressed: someone stored the same bytes
            except Exception as e:
                raise self._err(e, f"uploading {path.name}") from None
        if reader.sha.hexdigest() != sha256:
            self.delete(key)
            raise ContentMismatch(f"{path} changed while it was being registered (sha256 differs): retry")

    def open_read(self, key: str) -> Iterator[bytes]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            stream = self._container().download_blob(self._key(key), max_concurrency=1)
        except ResourceNotFoundError:
            raise ModelRegistryError(f"registry {self.uri} has no object {key}") from None
        except Exception as e:
            raise self._err(e, f"downloading {key}") from None
        yield from stream.chunks()


def open_store(uri: str, credential: str | None = None) -> Store:
    """A store from a registry URI.

    - ``file:///abs/path`` — a local folder (created if absent).
    - ``azblob://ACCOUNT/CONTAINER[/PREFIX][?endpoint=URL]`` — Azure Blob Storage; ``endpoint`` defaults to
      ``https://ACCOUNT.blob.core.windows.net`` (Azurite: ``http://127.0.0.1:10000/devstoreaccount1``). The
      credential (account key, SAS token or connection string) is passed separately, as a secret.
    """
    u = urllib.parse.urlsplit(uri)
    if u.scheme == "file":
        if not u.path.startswith("/") or u.netloc not in ("", "localhost"):
            raise ModelRegistryError(
                f"registry URI {uri!r}: a file registry needs an absolute path, file:///abs/path"
                + (
                    f" ({u.netloc!r} would be read as a host name)"
                    if u.netloc not in ("", "localhost")
                    else ""
                )
            )
        return LocalStore(Path(urllib.parse.unquote(u.path)))
    if u.scheme == "azblob":
        account = u.hostname or ""
        parts = [p for p in u.path.split("/") if p]
        if not account or not parts:
            raise ModelRegistryError(
                f"registry URI {uri!r}: expected azblob://ACCOUNT/CONTAINER[/PREFIX][?endpoint=URL]"
            )
        container, prefix = parts[0], "/".join(parts[1:])
        if not 3 <= len(container) <= 63:
            raise ModelRegistryError(
                f"registry URI {uri!r}: container name {container!r} must have 3..63 characters"
            )
        endpoint = (
            dict(urllib.parse.parse_qsl(u.query)).get("endpoint")
            or f"https://{account}.blob.core.windows.net"
        )
        return AzureBlobStore(account, container, prefix, endpoint.rstrip("/"), credential)
    raise ModelRegistryError(
        f"registry URI {uri!r}: use file:///abs/path or azblob://ACCOUNT/CONTAINER[/PREFIX]"
    )
