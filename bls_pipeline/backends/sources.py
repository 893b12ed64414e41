"""The pinned upstream sources of Triton's DALI and ONNX Runtime backends: find, check, unpack.

The archives are ``git archive`` snapshots named ``<name>-<commit>.tar.gz``; ``git archive``
(and GitHub's archive download) writes the commit into the tar's pax global header, so the
commit is checked from the archive's content, not from its file name or checksum.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bls_pipeline.errors import BackendBuildError

GITHUB = "https://github.com"


@dataclass(frozen=True)
class PinnedSource:
    """One upstream repository at one commit; ``name`` is also its folder in the build tree."""

    name: str
    repository: str
    commit: str

    @property
    def archive_name(self) -> str:
        """The file name in a sources directory."""
        return f"{self.name}-{self.commit}.tar.gz"

    @property
    def url(self) -> str:
        """Where GitHub serves the same commit (a different top folder and checksum)."""
        return f"{GITHUB}/{self.repository}/archive/{self.commit}.tar.gz"


# The server side (core, common, backend) stays at r24.10, the release of pytriton 0.7.0's
# tritonserver 2.51; dali_backend's r24.10 does not compile against DALI 2.4, its main does.
SOURCES: tuple[PinnedSource, ...] = (
    PinnedSource("core", "triton-inference-server/core", "bfec7c61dc0939433f64f14e89b1973073eac8ba"),
    PinnedSource("common", "triton-inference-server/common", "578491fc3944f77d16a6a38e3d7691c485c47ba0"),
    PinnedSource("backend", "triton-inference-server/backend", "ac03a5d97403dec841ad46d0439e93db12c9268f"),
    PinnedSource("dali_backend", "triton-inference-server/dali_backend", "01783f8f28b2a29cb64b06201d9d7cc20db27f5d"),
    PinnedSource(
        "onnxruntime_backend", "triton-inference-server/onnxruntime_backend", "17e5cb23a6fbeb37282eb7079dd0b580cd79530d"
    ),
    PinnedSource("rapidjson", "Tencent/rapidjson", "24b5e7a8b27f42fa16b96fc70aade9106cf7102f"),
)

# ONNX Runtime's C API headers: append-only, the API version is chosen at run time, so any
# release at least as new as the backend needs compiles it. No commit: checked by API version.
ORT_HEADERS_VERSION = "1.23.2"
ORT_HEADERS_ARCHIVE = f"onnxruntime-headers-{ORT_HEADERS_VERSION}.tar.gz"
ORT_HEADERS_URL = f"{GITHUB}/microsoft/onnxruntime/archive/refs/tags/v{ORT_HEADERS_VERSION}.tar.gz"
ORT_API_VERSION = 23


def archive_commit(archive: Path) -> str | None:
    """The commit that ``git archive`` recorded in ``archive``, or None when it has none."""
    try:
        with tarfile.open(archive) as tar:
            return tar.pax_headers.get("comment")
    except (tarfile.TarError, OSError) as exc:
        raise BackendBuildError(f"cannot read archive {archive}: {exc}") from None


def check_commit(source: PinnedSource, found: str | None, archive: Path) -> None:
    """Refuse an archive whose recorded commit is not the pinned one."""
    if found is None:
        raise BackendBuildError(
            f"{archive} records no commit (not a git archive); expected {source.repository}@{source.commit}"
        )
    if found != source.commit:
        raise BackendBuildError(f"{archive} is {source.repository}@{found}, expected the pinned commit {source.commit}")


def ort_api_version(header: Path) -> int:
    """``ORT_API_VERSION`` as defined in ``onnxruntime_c_api.h``."""
    for line in header.read_text(errors="replace").splitlines():
        parts = line.split()
        if parts[:2] == ["#define", "ORT_API_VERSION"] and len(parts) >= 3 and parts[2].isdigit():
            return int(parts[2])
    raise BackendBuildError(f"{header} defines no ORT_API_VERSION")


def _extract(archive: Path, dest: Path) -> None:
    """Unpack ``archive``'s single top folder as ``dest`` (its name differs between the
    shared archives and GitHub's)."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        tops = [path for path in Path(tmp).iterdir() if path.is_dir()]
        if len(tops) != 1:
            raise BackendBuildError(f"{archive} should hold one top folder, has {len(tops)}")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(tops[0]), dest)


def ort_include_dir(tree: Path) -> Path:
    """The folder of ``onnxruntime_c_api.h`` in the unpacked headers (flat in the shared
    archive, ``include/onnxruntime/core/session`` in ONNX Runtime's own tree)."""
    upstream = tree / "onnxruntime" / "include" / "onnxruntime" / "core" / "session"
    if (upstream / "onnxruntime_c_api.h").is_file():
        return upstream
    found = sorted((tree / "onnxruntime").glob("onnxruntime_c_api.h"))
    if not found:
        raise BackendBuildError(f"no onnxruntime_c_api.h under {tree / 'onnxruntime'}")
    return found[0].parent


def _download(url: str, dest: Path, progress) -> Path:
    progress(f"      downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        raise BackendBuildError(f"cannot download {url}: {exc}") from None
    return dest


def unpack_sources(sources_dir: Path | None, tree: Path, progress) -> None:
    """Check and unpack every pinned source into ``tree/<name>`` (and ORT headers into
    ``tree/onnxruntime``), from ``sources_dir`` or, when it is None, from GitHub."""
    tree.mkdir(parents=True, exist_ok=True)
    downloads = tree.parent / "downloads"
    if sources_dir is None:
        downloads.mkdir(exist_ok=True)
    for source in SOURCES:
        if sources_dir is None:
            archive = _download(source.url, downloads / source.archive_name, progress)
        else:
            archive = sources_dir / source.archive_name
            if not archive.is_file():
                raise BackendBuildError(f"missing archive {source.archive_name} in {sources_dir}")
        check_commit(source, archive_commit(archive), archive)
        _extract(archive, tree / source.name)
    if sources_dir is None:
        archive = _download(ORT_HEADERS_URL, downloads / ORT_HEADERS_ARCHIVE, progress)
    else:
        archive = sources_dir / ORT_HEADERS_ARCHIVE
        if not archive.is_file():
            raise BackendBuildError(f"missing archive {ORT_HEADERS_ARCHIVE} in {sources_dir}")
    _extract(archive, tree / "onnxruntime")
    found = ort_api_version(ort_include_dir(tree) / "onnxruntime_c_api.h")
    if found < ORT_API_VERSION:
        raise BackendBuildError(f"ONNX Runtime headers have API version {found}, need {ORT_API_VERSION} or newer")
