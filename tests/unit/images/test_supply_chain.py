"""Supply chain of scoring images (issue 17): requirement strings cannot carry pip options or URLs, and image builds
install only wheels whose sha256 matches what was recorded when they entered the wheelhouse (--require-hashes)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from mlinfra.errors import ImageBuildError
from mlinfra.images import builder


@pytest.mark.parametrize(
    ("req", "fragment"),
    [
        ("--index-url https://evil.example/simple", "carries pip options"),
        ("-e git+https://evil.example/x.git#egg=x", "carries pip options"),
        ("numpy==2.0 --extra-index-url https://evil.example", "carries pip options"),
        ("-r /etc/passwd", "carries pip options"),
        ("evil @ https://evil.example/evil-1.0-py3-none-any.whl", "is a direct reference"),
        ("numpy==2.0\n--trusted-host evil", "carries pip options"),
        ("numpy=>2", "is not a valid requirement"),
        ("", "is empty"),
    ],
)
def test_requirements_cannot_smuggle_pip_options_or_urls(req: str, fragment: str) -> None:
    with pytest.raises(ImageBuildError) as e:
        builder.check_requirement(req)
    assert fragment in str(e.value), str(e.value)
    if req.strip():
        with pytest.raises(ImageBuildError):
            builder.image_requirements([req])  # what builds call


def test_ordinary_requirements_pass_normalized() -> None:
    assert builder.check_requirement(" scikit-learn==1.5.2 ") == "scikit-learn==1.5.2"
    assert builder.check_requirement("requests[socks]>=2,<3; python_version >= '3.8'") == (
        'requests[socks]<3,>=2; python_version >= "3.8"'
    )


def _wheel(path: Path, name: str, version: str, body: str) -> Path:
    """A minimal pure-Python wheel NAME-VERSION with module NAME holding BODY."""
    files = {
        f"{name}.py": body.encode(),
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = (
        "".join(
            f"{k},sha256={base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b'=').decode()},{len(v)}\n"
            for k, v in files.items()
        )
        + f"{name}-{version}.dist-info/RECORD,,\n"
    )
    out = path / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
        z.writestr(f"{name}-{version}.dist-info/RECORD", record)
    return out


def test_builds_install_only_wheels_matching_their_recorded_hash(tmp_path: Path, monkeypatch) -> None:
    wh = tmp_path / "wheelhouse"
    wh.mkdir()
    monkeypatch.setenv("MLINFRA_WHEELHOUSE", str(wh))
    monkeypatch.setenv("MLINFRA_PIP_OFFLINE", "1")
    _wheel(wh, "tinypkg", "1.0", "VALUE = 'good'\n")
    builder._record_hashes(wh)
    assert set(builder.wheel_hashes(wh)) == {"tinypkg-1.0-py3-none-any.whl"}
    builder.pip_target(["tinypkg==1.0"], tmp_path / "ok")
    assert "good" in (tmp_path / "ok" / "tinypkg.py").read_text()

    _wheel(wh, "tinypkg", "1.0", "VALUE = 'evil'\n")  # the same file name, other bytes
    with pytest.raises(ImageBuildError, match="was changed after it was downloaded"):
        builder.pip_target(["tinypkg==1.0"], tmp_path / "tampered")
    assert not (tmp_path / "tampered" / "tinypkg.py").exists()

    _wheel(wh, "planted", "2.0", "X = 1\n")  # dropped in by hand: no recorded hash
    with pytest.raises(ImageBuildError, match="has no recorded sha256"):
        builder.pip_target(["planted==2.0"], tmp_path / "planted")
