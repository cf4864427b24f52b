"""The package as pip installs it: the wheel built from this checkout, and the sdist.

hatchling (the build backend) builds them in this process, in about a second, with no
network and no isolated environment; a wheel built so holds what `uv build` puts in one."""

from __future__ import annotations

import tarfile
import zipfile
from importlib import resources

import pytest

import swarmpilot_predictor

from .conftest import REPO_ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[set[str], list[str]]:
    """The built wheel's file names, and its METADATA's lines."""
    WheelBuilder = pytest.importorskip("hatchling.builders.wheel", reason="the dev group's hatchling builds it").WheelBuilder

    path = next(WheelBuilder(str(REPO_ROOT)).build(directory=str(tmp_path_factory.mktemp("wheel")),
                                                   versions=["standard"]))
    with zipfile.ZipFile(path) as built:
        names = set(built.namelist())
        metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
        return names, built.read(metadata).decode().splitlines()


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory) -> set[str]:
    SdistBuilder = pytest.importorskip("hatchling.builders.sdist", reason="the dev group's hatchling builds it").SdistBuilder

    path = next(SdistBuilder(str(REPO_ROOT)).build(directory=str(tmp_path_factory.mktemp("sdist")),
                                                   versions=["standard"]))
    with tarfile.open(path) as sdist:
        return {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}


def test_wheel_holds_the_dashboard_and_py_typed(wheel):
    wheel_names, metadata = wheel
    # The dashboard's page is read from the installed package; py.typed tells type checkers
    # (mypy, pyright) to read the client's annotations rather than treat it as untyped.
    assert "swarmpilot_predictor/static/dashboard.html" in wheel_names
    assert "swarmpilot_predictor/py.typed" in wheel_names
    assert "swarmpilot_predictor/__main__.py" in wheel_names
    assert "Classifier: Typing :: Typed" in metadata
    assert f"Version: {swarmpilot_predictor.__version__}" in metadata  # what /health and --version report


def test_sdist_holds_what_its_wheel_needs(sdist_names):
    # A wheel built from the sdist (as pip does from one) needs its build config, its readme
    # (the metadata's description) and every file of the package.
    for name in ("pyproject.toml", "README.md", "src/swarmpilot_predictor/static/dashboard.html",
                 "src/swarmpilot_predictor/py.typed"):
        assert name in sdist_names


def test_installed_package_reads_its_files():
    package = resources.files(swarmpilot_predictor)
    assert package.joinpath("py.typed").is_file()
    assert b"<html" in package.joinpath("static", "dashboard.html").read_bytes()


def test_no_model_field_is_taken_for_pydantic_s_own():
    # pydantic before 2.10 (the package takes 2.9, the oldest FastAPI takes) reserves the
    # prefix model_ unless a model opts out: QueueWaitEstimate's model_version had
    # `import swarmpilot_predictor.client` warn "Field "model_version" in QueueWaitEstimate
    # has conflict with protected namespace "model_"", an error under -W error.
    import importlib
    import pkgutil

    from pydantic import BaseModel

    for module in pkgutil.walk_packages(swarmpilot_predictor.__path__, "swarmpilot_predictor."):
        if module.name != "swarmpilot_predictor.__main__":
            importlib.import_module(module.name)
    models, seen = [BaseModel], []
    while models:
        for model in models.pop().__subclasses__():
            models.append(model)
            if model.__module__.startswith("swarmpilot_predictor.") and any(
                    name.startswith("model_") for name in model.model_fields):
                seen.append(model.__name__)
                assert model.model_config.get("protected_namespaces") == (), model.__qualname__
    assert "QueueWaitEstimate" in seen and "PredictionResult" in seen


def test_readme_layout_names_every_module_of_the_package():
    # README's Layout is where a reader looks for the module that does a thing: request_ids.py
    # (the X-Request-ID of every answer, RequestIdFilter) and protocol.py (serve's 431) were
    # missing from it. Each module and folder of the package is named there, and each module
    # of a folder whose modules it lists one by one (modeling/, lookup/; routes/ is described
    # as a whole).
    readme = (REPO_ROOT / "README.md").read_text()
    layout = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    named, folder = set(), ""
    for line in layout.splitlines():
        if line.startswith("    ") and line[4:5] not in (" ", "") and folder:
            named.add(folder + line.split()[0])  # a module of the folder named above it
        elif line.startswith("  ") and line[2:3] not in (" ", ""):
            name = line.split()[0]
            named.add(name)
            folder = name if name.endswith("/") else ""
    package = REPO_ROOT / "src" / "swarmpilot_predictor"
    entries = [p for p in package.iterdir() if not p.name.startswith("_") and p.name != "__pycache__"]
    missing = [p.name for p in entries
               if (p.name + "/" if p.is_dir() else p.name) not in named and (p.is_dir() or p.suffix in (".py", ".typed"))]
    for folder in (p for p in entries if p.is_dir()):
        modules = [f"{folder.name}/{m.name}" for m in folder.glob("*.py") if not m.name.startswith("_")]
        if any(m in named for m in modules):
            missing += [m for m in modules if m not in named]
    assert not missing, f"README's Layout does not name {sorted(missing)}"
