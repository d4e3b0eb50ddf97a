"""The registry's rules on a local folder registry (fast, no services)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlinfra.lab.samples import write_mlp
from mlinfra.registry import (
    ContentMismatch,
    InvalidModel,
    ModelError,
    ModelRegistry,
    validate_name,
    validate_tags,
)


@pytest.fixture
def reg(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(f"file://{tmp_path / 'registry'}")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_mlp(tmp_path / "m" / "model.onnx")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("a/b", "'/'"),
        ("../etc", "'/'"),
        ("a..b", "'..'"),
        ("has space", "' '"),
        ("ctl\x07", "'\\x07'"),
        ("x" * 256, "256 characters; the limit is 255"),
        ("", "non-empty"),
        ("-lead", "starting with a letter or digit"),
    ],
)
def test_bad_names_are_named_in_the_error(name: str, fragment: str) -> None:
    with pytest.raises(ModelError) as e:
        validate_name(name)
    assert fragment in str(e.value)


def test_tag_limits() -> None:
    assert validate_tags({"b": "2", "a": "1"}) == {"a": "1", "b": "2"}
    with pytest.raises(ModelError, match=r"keys are 1\.\.128"):
        validate_tags({"k" * 129: "v"})
    with pytest.raises(ModelError, match="257 characters; the limit is 256"):
        validate_tags({"k": "v" * 257})
    with pytest.raises(ModelError, match="must be a string"):
        validate_tags({"k": 3})
    with pytest.raises(ModelError, match="51 entries"):
        validate_tags({f"k{i}": "v" for i in range(51)})


def test_versions_are_content_addressed(reg: ModelRegistry, model: Path, tmp_path: Path) -> None:
    v1, created = reg.register("mlp", model, tags={"stage": "dev"})
    assert (v1.version, created) == (1, True)
    assert v1.signature["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    same, created = reg.register("mlp", model, tags={"stage": "dev"})
    assert (same.version, created) == (1, False)
    retagged, created = reg.register("mlp", model, tags={"stage": "prod"})
    assert (retagged.version, created, retagged.tags) == (1, False, {"stage": "prod"})
    v2, created = reg.register("mlp", write_mlp(tmp_path / "m2.onnx", seed=7))
    assert (v2.version, created) == (2, True)
    assert reg.versions("mlp") == [1, 2]
    out = reg.download("mlp:1", tmp_path / "dl.onnx")
    assert out.read_bytes() == model.read_bytes()
    assert reg.resolve("mlp").version == 2


def test_download_refuses_corrupt_bytes(reg: ModelRegistry, model: Path, tmp_path: Path) -> None:
    mv, _ = reg.register("mlp", model)
    blob = tmp_path / "registry" / "blobs" / "sha256" / mv.sha256
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ContentMismatch, match="does not match its sha256"):
        reg.download("mlp:1", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists(), "a corrupt download must leave nothing behind"


def test_in_use_versions_cannot_be_deleted(reg: ModelRegistry, model: Path) -> None:
    reg.register("mlp", model)
    reg.add_user("mlp", 1, "image:127.0.0.1:5000/scoring@sha256:abc")
    with pytest.raises(ModelError, match=r"in use by image:127\.0\.0\.1:5000/scoring@sha256:abc"):
        reg.delete_version("mlp", 1)
    reg.remove_user("mlp", 1, "image:127.0.0.1:5000/scoring@sha256:abc")
    reg.delete_version("mlp", 1)
    assert reg.versions("mlp") == []


def test_aliases_and_search(reg: ModelRegistry, model: Path, tmp_path: Path) -> None:
    reg.register("mlp", model, tags={"team": "a"}, properties={"accuracy": "0.91"})
    reg.register("mlp", write_mlp(tmp_path / "m2.onnx", seed=3), tags={"team": "b"})
    reg.set_alias("mlp", "champion", 1)
    assert reg.resolve("mlp@champion").version == 1
    with pytest.raises(ModelError, match="has no version 9"):
        reg.set_alias("mlp", "champion", 9)
    assert [m.version for m in reg.search(tags={"team": "b"})] == [2]
    assert [m.version for m in reg.search(properties={"accuracy": "0.91"})] == [1]


def test_folder_models_and_custom_framework(reg: ModelRegistry, tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    (folder / "sub").mkdir(parents=True)
    (folder / "vocab.txt").write_text("a\nb\n")
    (folder / "sub" / "weights.bin").write_bytes(b"\x01" * 1000)
    mv, _ = reg.register("tokenizer", folder, framework="custom")
    assert [f["path"] for f in mv.files] == ["sub/weights.bin", "vocab.txt"]
    out = reg.download("tokenizer:1", tmp_path / "out")
    assert (out / "sub" / "weights.bin").read_bytes() == b"\x01" * 1000


def test_bad_model_files(reg: ModelRegistry, tmp_path: Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="is empty"):
        reg.register("m", empty)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(InvalidModel, match="is not a valid ONNX model"):
        reg.register("m", junk)
    with pytest.raises(ModelError, match="does not exist"):
        reg.register("m", tmp_path / "missing.onnx")
    assert reg.names() == [], "nothing may be written for bad input"


def test_a_dead_writers_committed_version_is_recovered_not_duplicated(
    reg: ModelRegistry, model: Path, tmp_path: Path
) -> None:
    """A writer killed after committing version 1 but before pointing the content index at it leaves a stale
    claim; the next writer of that content takes the claim over and finds version 1 instead of making version 2."""
    import json
    import socket
    import subprocess
    import time

    mv, _ = reg.register("mlp", model)
    dead = subprocess.Popen(["true"])
    dead.wait()
    index = tmp_path / "registry" / "models" / "mlp" / "sha256" / f"{mv.sha256}.json"
    index.write_text(
        json.dumps({"claim": "x", "host": socket.gethostname(), "pid": dead.pid, "at": time.time()})
    )
    again, created = reg.register("mlp", model)
    assert (again.version, created) == (1, False)
    assert reg.versions("mlp") == [1]
    assert json.loads(index.read_text()) == {"version": 1}


def test_drift_check_and_restore_only_the_same_bytes(tmp_path: Path) -> None:
    """check_version names what is gone or damaged; restore_files puts back only bytes whose sha256 is the
    recorded one, and refuses — naming the file and the way out — when the source no longer holds them."""
    from mlinfra.lab.samples import write_mlp
    from mlinfra.registry import ModelError, ModelRegistry

    reg = ModelRegistry(f"file://{tmp_path / 'r'}")
    src = write_mlp(tmp_path / "m.onnx")
    mv, _ = reg.register("m", src)
    assert reg.check_version("m", 1) == "present"
    blob = tmp_path / "r" / "blobs" / "sha256" / mv.sha256
    size = blob.stat().st_size
    blob.write_bytes(blob.read_bytes()[:10])
    assert reg.check_version("m", 1) == f"file m.onnx has 10 of {size} bytes"
    assert reg.restore_files("m", 1, src) == ["m.onnx"]
    assert reg.check_version("m", 1) == "present" and blob.stat().st_size == size
    assert reg.restore_files("m", 1, src) == []  # nothing to do
    blob.unlink()
    assert reg.check_version("m", 1) == "file m.onnx missing"
    src.write_bytes(b"another model")
    with pytest.raises(ModelError, match=r"no longer holds them .*put the original file back"):
        reg.restore_files("m", 1, src)
    with pytest.raises(ModelError, match="pins the version without a path"):
        reg.restore_files("m", 1, None)
    assert reg.check_version("m", 1) == "file m.onnx missing", "nothing different was stored"
    (tmp_path / "r" / "models" / "m" / "versions" / "0000000001.json").unlink()
    assert reg.check_version("m", 1) == "version record missing"
    with pytest.raises(ModelError, match=r"deleted from .* outside Pulumi"):
        reg.restore_files("m", 1, src)


_SHA = "ab" * 32


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ([{"path": "../../evil.onnx", "sha256": _SHA, "size": 3}], "is not a relative, normalized path"),
        ([{"path": "/etc/evil", "sha256": _SHA, "size": 3}], "is not a relative, normalized path"),
        ([{"path": "a/./b", "sha256": _SHA, "size": 3}], "is not a relative, normalized path"),
        ([{"path": "a//b", "sha256": _SHA, "size": 3}], "is not a relative, normalized path"),
        ([{"path": "a\\..\\..\\b", "sha256": _SHA, "size": 3}], "is not a relative, normalized path"),
        (
            [{"path": "x", "sha256": _SHA, "size": 3}, {"path": "x", "sha256": _SHA, "size": 3}],
            "listed twice",
        ),
        ([{"path": "x", "sha256": "../../models/other", "size": 3}], "64 lowercase hex"),
        ([{"path": "x", "sha256": _SHA, "size": -1}], "is not a byte count"),
        ([], "non-empty list"),
    ],
)
def test_a_version_record_with_hostile_paths_is_refused_wherever_it_is_read(
    tmp_path: Path, reg: ModelRegistry, files: list, fragment: str
) -> None:
    """A record someone with write access to the registry rewrote: download, image builds and copies refuse it before
    any path touches a disk, naming the record."""
    import json

    from mlinfra.images.builder import ModelInput, model_layer
    from mlinfra.registry import ModelRegistryError

    folder = tmp_path / "folder-model"
    write_mlp(folder / "model.onnx")
    (folder / "sub").mkdir()
    (folder / "sub" / "vocab.txt").write_text("a b c")
    mv, _ = reg.register("m", folder)
    record = tmp_path / "registry" / "models" / "m" / "versions" / f"{1:010d}.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "files": files}))

    with pytest.raises(ModelRegistryError) as e:
        reg.download("m:1", tmp_path / "out" / "deep")
    assert fragment in str(e.value) and "m:1" in str(e.value) and "versions/0000000001.json" in str(e.value)
    assert not (tmp_path / "evil.onnx").exists() and not (tmp_path / "out" / "evil.onnx").exists()
    with pytest.raises(ModelRegistryError, match=fragment.replace(".", r"\.")):
        model_layer(ModelInput("m", 1, mv.sha256, reg.uri), lambda *_: None)
    other = ModelRegistry(f"file://{tmp_path / 'other'}")
    with pytest.raises(ModelRegistryError, match="refusing this version record"):
        other.copy_version(reg, "m", 1, mv.sha256)
    assert other.get("m", 1) is None


def test_a_record_for_another_name_or_version_is_refused(
    tmp_path: Path, reg: ModelRegistry, model: Path
) -> None:
    import json

    from mlinfra.registry import ModelRegistryError

    reg.register("m", model)
    record = tmp_path / "registry" / "models" / "m" / "versions" / f"{1:010d}.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "name": "../other"}))
    with pytest.raises(ModelRegistryError, match="names another model or version"):
        reg.get("m", 1)


def test_a_blob_is_never_deleted_from_under_a_new_version(tmp_path: Path) -> None:
    """Writer W registers content sharing a file with v1 while deleter D deletes v1, D running at W's worst moment:
    after W saw the shared blob exists (so skips uploading it) and before W commits its record."""
    folder = tmp_path / "v1"
    write_mlp(folder / "model.onnx")
    (folder / "vocab.txt").write_text("shared bytes")
    writer = ModelRegistry(f"file://{tmp_path / 'registry'}")
    deleter = ModelRegistry(f"file://{tmp_path / 'registry'}")
    v1, _ = writer.register("m", folder)
    folder2 = tmp_path / "v2"
    write_mlp(folder2 / "model.onnx", seed=9)
    (folder2 / "vocab.txt").write_text("shared bytes")
    shared = next(e.sha256 for e in __import__("mlinfra.registry.registry", fromlist=["x"]).scan_content(folder2).files
                  if e.path == "vocab.txt")  # fmt: skip
    real_exists = writer.store.exists
    ran: list[bool] = []

    def exists_then_delete(key: str) -> bool:
        found = real_exists(key)
        if key == f"blobs/sha256/{shared}" and not ran:
            ran.append(True)
            deleter.delete_version("m", 1)  # nobody uses v1: its unique blob goes, the shared one must stay
        return found

    writer.store.exists = exists_then_delete  # type: ignore[method-assign]
    mv2, created = writer.register("m", folder2)
    assert ran and created and deleter.find_by_content("m", v1.sha256) is None, "v1 was not deleted"
    out = writer.download(f"m:{mv2.version}", tmp_path / "out")
    assert (out / "vocab.txt").read_text() == "shared bytes"
    assert not list((tmp_path / "registry" / "blobs").glob("pending/*/*")), "markers left behind"
    assert not list((tmp_path / "registry" / "blobs").glob("deleting/*"))


def test_registering_content_whose_blob_was_lost_puts_it_back(
    tmp_path: Path, reg: ModelRegistry, model: Path
) -> None:
    mv, _ = reg.register("m", model)
    (tmp_path / "registry" / "blobs" / "sha256" / mv.sha256).unlink()
    again, created = reg.register("m", model)
    assert (again.version, created) == (mv.version, False)
    assert reg.download(f"m:{mv.version}", tmp_path / "x.onnx").read_bytes() == model.read_bytes()


def test_a_version_being_deleted_gets_no_new_user(tmp_path: Path, reg: ModelRegistry, model: Path) -> None:
    """A new user (an image build) arriving while delete_version runs: it is refused and leaves no record, or
    the deletion is refused — never a user of a deleted version."""
    reg.register("m", model)
    other = ModelRegistry(reg.uri)
    real_users = reg.users
    refused: list[str] = []

    def users_then_new_user(name: str, version: int) -> list[str]:
        found = real_users(name, version)  # the deleter has looked: nobody
        try:
            other.add_user(name, version, "image-build-42")
        except ModelError as e:
            refused.append(str(e))
        return found

    reg.users = users_then_new_user  # type: ignore[method-assign]
    reg.delete_version("m", 1)
    assert reg.get("m", 1) is None
    assert refused and "is being deleted" in refused[0] and "image-build-42" in refused[0]
    assert real_users("m", 1) == [], "the refused user left a record"
    with pytest.raises(ModelError, match="is being deleted \\(or is gone\\)"):
        other.add_user("m", 1, "late")


@pytest.mark.parametrize("uri", ["file://relative/folder", "file://.mlinfra/registry", "file:relative"])
def test_a_file_registry_uri_must_be_absolute(uri: str) -> None:
    """file://.mlinfra/registry reads ".mlinfra" as a host and would write under /registry: refused, naming why."""
    from mlinfra.errors import ModelRegistryError
    from mlinfra.registry.store import open_store

    with pytest.raises(ModelRegistryError, match="absolute path, file:///abs/path"):
        open_store(uri)


def test_a_model_path_that_is_missing_empty_or_not_a_file_is_named(tmp_path: Path) -> None:
    from mlinfra.registry.registry import scan_content

    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    for path, says in (
        (tmp_path / "nope.onnx", "does not exist"),
        (tmp_path / "empty.onnx", "is empty (0 bytes)"),
        (tmp_path / "folder", "has no files"),
        (Path("/dev/zero"), "is neither a file nor a folder"),  # not read forever
    ):
        with pytest.raises(ModelError, match=re.escape(says)):
            scan_content(path)
