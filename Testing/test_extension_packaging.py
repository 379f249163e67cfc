"""The extension as the Extensions Manager sees it (issue 16, finding 8): a licence, an
ExtensionsIndex description that passes the index's own checks, and a CMake project that
configures and installs the module, MedTransferLib and the resources where Slicer loads them.

The description checks are those of Slicer/ExtensionsIndex scripts/check_description_files.py
and schemas/slicer-extension-catalog-entry-schema-v1.0.x.json, done here offline (the index's
script also clones the repository and fetches the icon and screenshot URLs, which needs the
network: here each URL must name a file of this repository). The CMake build uses stand-ins for
Slicer's CMake (SlicerConfig.cmake, slicerMacroBuildScriptedModule following
CMake/SlicerMacroBuildScriptedModule.cmake: a missing SCRIPT or RESOURCE is a fatal error,
scripts and resources install under the scripted-modules folder). What only a real Slicer build
confirms: its Python compilation step and the extension package (CPack).
"""

import json
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTION = ROOT / "MedTransfer.json"
SCHEMA_KEYS = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
               "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str, "enabled": bool,
               "tier": int}


def _cmake_vars() -> dict:
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    return dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"\s*\)', top))


def test_the_licence_is_the_one_pyproject_states():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["license"]["text"]
    assert declared == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_the_extensions_index_description_passes_the_index_checks():
    raw = DESCRIPTION.read_bytes()
    assert b"\r" not in raw                                   # check_json_file_format: LF only
    meta = json.loads(raw)
    # the schema: required keys, no others, their types, tier 1..5, scm_type enum
    assert {"$schema", "category", "scm_url"} <= set(meta) and set(meta) <= set(SCHEMA_KEYS)
    assert all(isinstance(meta[k], SCHEMA_KEYS[k]) for k in meta)
    assert re.search(r"slicer-extension-catalog-entry-schema-v1\.0\.\d\.json", meta["$schema"])
    assert 1 <= meta.get("tier", 1) <= 5 and meta.get("scm_type", "git") in ("git", "local")
    name = DESCRIPTION.stem
    assert not name.lower().startswith("slicer")              # check_extension_name
    assert meta["category"] == "Segmentation"                 # one of ACCEPTED_EXTENSION_CATEGORIES
    url = urllib.parse.urlsplit(meta["scm_url"])              # check_scm_url_syntax
    assert url.scheme in ("git", "https") and "://" in meta["scm_url"]
    repo = Path(url.path.strip("/")).stem                     # check_git_repository_name
    assert repo.startswith("Slicer")
    # check_cmakelists_content: project() name = description name; icon and screenshot URLs
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.findall(r"project\s*\(\s*([^\s\)]+)", top, re.IGNORECASE)[0] == name
    cm = _cmake_vars()
    urls = [cm["EXTENSION_ICONURL"], *cm["EXTENSION_SCREENSHOTURLS"].split()]
    assert len(urls) >= 2 and all(u.startswith("http") for u in urls)
    for u in urls:   # each names a PNG/JPEG/GIF this repository has, on the branch scm_revision names
        rel = u.split(f"/{meta['scm_revision']}/", 1)[1]
        assert rel.lower().endswith((".png", ".jpg", ".jpeg", ".gif")) and (ROOT / rel).is_file(), u
        assert f"/{Path(url.path).stem}/" in u                 # the same repository
    assert (ROOT / "LICENSE").is_file()                       # check_license_file
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True).stdout.split(b"\0")
    size = sum((ROOT / f.decode()).stat().st_size for f in tracked if f and (ROOT / f.decode()).is_file())
    assert size < 100 * 2 ** 20                               # check_repository_size
    # and the description agrees with the extension's own metadata
    assert meta["build_dependencies"] == cm["EXTENSION_DEPENDS"].split() == ["PyTorch"]
    assert cm["EXTENSION_HOMEPAGE"].startswith(meta["scm_url"].removesuffix(".git"))


FAKE_SLICER = {
    "SlicerConfig.cmake": """
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.12/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.12/qt-scripted-modules")
set(Slicer_USE_PYTHONQT ON)
""",
    "Empty.cmake": "",
    "UseSlicer.cmake": """
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  foreach(value ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value} AND NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value}.py)
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file or directory '${value}'")
    endif()
  endforeach()
  install(FILES ${MY_SLICER_SCRIPTS} DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR})
  foreach(resource ${MY_SLICER_RESOURCES})
    get_filename_component(rdir ${resource} DIRECTORY)
    install(FILES ${resource} DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/${rdir})
  endforeach()
endmacro()
macro(slicer_add_python_unittest)
endmacro()
""",
}


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_configures_and_installs_module_library_and_resources(tmp_path):
    fake = tmp_path / "Slicer"
    fake.mkdir()
    for name, text in FAKE_SLICER.items():
        (fake / name).write_text(text, encoding="utf-8")
    build, prefix = tmp_path / "build", tmp_path / "install"
    configure = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={fake}",
                                "-DBUILD_TESTING=ON", f"-DCMAKE_INSTALL_PREFIX={prefix}"],
                               capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    install = subprocess.run(["cmake", "--install", str(build)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    modules = prefix / "lib" / "Slicer-5.12" / "qt-scripted-modules"
    assert (modules / "MedTransfer.py").is_file()
    assert (modules / "Resources" / "UI" / "MedTransfer.ui").is_file()
    assert (modules / "Resources" / "Icons" / "MedTransfer.png").is_file()
    # every engine file, so that the module's "MedTransferLib beside me" import works installed
    engine = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "MedTransferLib").rglob("*.py"))
    installed = sorted(p.relative_to(modules).as_posix() for p in (modules / "MedTransferLib").rglob("*.py"))
    assert installed == engine and "MedTransferLib/slicer/widget.py" in installed
