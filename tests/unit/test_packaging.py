"""The wheel ships every subpackage and its data, and works installed outside the checkout.

A non-editable install once missed ``canary.lab``: the editable install of the
development venv hides such a gap (it imports from the checkout). So this test
builds the wheel (``python -m build --no-isolation``: no download), unpacks it
into a fresh venv whose only other path is the development venv's
site-packages (for the dependencies; that directory's ``.pth`` files, among them
the editable install's finder, are not processed), and runs canary from a
directory outside the checkout.

Slow (marked ``slow``): a build and a few interpreter starts, some seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "canary"
DEV_PYTHON = ROOT / ".venv" / "bin" / "python"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _run(args: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CANARY_", "VIRTUAL_ENV", "PULUMI_CONFIG"))}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the checkout's sources (so that the build's build/ and egg-info
    stay out of the checkout, and no stale build/lib of an earlier build can leak into the wheel)."""
    work = tmp_path_factory.mktemp("build")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(SOURCE, src / "canary", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = work / "dist"
    build = _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, src], cwd=work, env=_clean_env(), timeout=240)
    if build.returncode != 0:
        pytest.fail("python -m build --wheel --no-isolation failed"
                    + (" (a build dependency is missing from the venv: see pyproject's test extras)" if "Unmet dependencies" in build.stderr else "")
                    + f":\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
    (built,) = out.glob("canary-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel unpacked into it and the development venv's packages on its path."""
    home = tmp_path_factory.mktemp("venv") / "venv"
    made = _run([DEV_PYTHON, "-m", "venv", "--without-pip", home], cwd=home.parent, env=_clean_env())
    assert made.returncode == 0, made.stderr
    python = home / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=home, env=_clean_env()).stdout.strip())
    assert site.is_dir() and site.is_relative_to(home), site
    dev_site = Path(_run([DEV_PYTHON, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=ROOT, env=_clean_env()).stdout.strip())
    # a path line, not an import line: dev_site joins sys.path, its own .pth files (the editable finder) are not run
    (site / "dev-dependencies.pth").write_text(f"{dev_site}\n")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # the console script an installer would write, from the wheel's own entry point
    entry_points = next(site.glob("canary-*.dist-info")) / "entry_points.txt"
    line = next(ln for ln in entry_points.read_text().splitlines() if ln.replace(" ", "").startswith("canary="))
    module, _, func = line.split("=", 1)[1].strip().partition(":")
    script = home / "bin" / "canary"
    script.write_text(f"#!{python}\nimport sys\nfrom {module} import {func}\nif __name__ == '__main__':\n    sys.exit({func}())\n")
    script.chmod(0o755)
    yield home


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working directory outside the checkout, with no Pulumi project above it."""
    assert not tmp_path.is_relative_to(ROOT)
    assert not any((parent / "Pulumi.yaml").exists() for parent in (tmp_path, *tmp_path.parents))
    return tmp_path


def _source_packages() -> set[str]:
    return {".".join(p.parent.relative_to(ROOT).parts) for p in SOURCE.rglob("__init__.py") if "__pycache__" not in p.parts}


def _source_data() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in SOURCE.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}


def test_the_wheel_holds_every_subpackage_and_its_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {".".join(Path(n).parent.parts) for n in names if n.endswith("/__init__.py")}
    assert {"canary", "canary.core", "canary.adapters", "canary.state", "canary.release", "canary.lab"} <= packages
    assert packages == _source_packages()
    assert {"canary/core/podschema.json", "canary/lab/versions.env"} <= names
    assert _source_data() <= names, f"data files missing from the wheel: {sorted(_source_data() - names)}"
    modules = {p.relative_to(ROOT).as_posix() for p in SOURCE.rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]


#: Imports every module found by walking the installed package; prints where canary came from and what failed.
IMPORT_ALL = """
import importlib, json, pkgutil, traceback, canary
names = [m.name for m in pkgutil.walk_packages(canary.__path__, 'canary.')]
failed = {}
for name in names:
    if name == 'canary.__main__':  # importing it runs the CLI
        continue
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = traceback.format_exception_only(exc)[-1].strip().replace(canary.__path__[0], '<canary>')
print(json.dumps({'file': canary.__file__, 'names': names, 'failed': failed}))
"""


def _import_all(python: Path, cwd: Path) -> dict[str, Any]:
    result = _run([python, "-c", IMPORT_ALL], cwd=cwd, env=_clean_env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _expected_modules() -> set[str]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for p in SOURCE.rglob("*.py") if "__pycache__" not in p.parts} - {"canary"}


@pytest.fixture(scope="module")
def installed(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every module of the installed package imported, from a directory outside the checkout."""
    return _import_all(venv / "bin" / "python", tmp_path_factory.mktemp("outside"))


def test_the_installed_package_is_the_wheels_and_has_every_module(venv: Path, outside: Path, installed: dict[str, Any]) -> None:
    found = installed
    assert Path(found["file"]).is_relative_to(venv), found["file"]
    assert not Path(found["file"]).is_relative_to(ROOT)
    assert set(found["names"]) == _expected_modules()
    check = ("from importlib import resources\n"
             "assert resources.files('canary.core').joinpath('podschema.json').is_file()\n"
             "assert resources.files('canary.lab').joinpath('versions.env').read_text().strip()\n")
    data = _run([venv / "bin" / "python", "-c", check], cwd=outside, env=_clean_env())
    assert data.returncode == 0, data.stderr


def test_what_imports_from_the_checkout_imports_from_the_wheel(installed: dict[str, Any]) -> None:
    """Packaging alone: a module may fail to import only where it fails in the checkout too, for the same reason."""
    checkout = _import_all(DEV_PYTHON, ROOT)
    assert Path(checkout["file"]).is_relative_to(SOURCE)
    assert {name: error for name, error in installed["failed"].items() if checkout["failed"].get(name) != error} == {}


def test_every_module_of_the_installed_package_imports(installed: dict[str, Any]) -> None:
    assert installed["failed"] == {}


def test_python_m_canary_runs_from_the_installed_wheel(venv: Path, outside: Path) -> None:
    python = venv / "bin" / "python"
    helped = _run([python, "-m", "canary", "--help"], cwd=outside, env=_clean_env())
    assert helped.returncode == 0, helped.stderr
    assert "validate" in helped.stdout and "lab" in helped.stdout
    stack_file = outside / "Pulumi.prod.yaml"
    shutil.copy2(ROOT / "stacks" / "Pulumi.prod.yaml", stack_file)
    validated = _run([python, "-m", "canary", "validate", "--file", stack_file], cwd=outside, env=_clean_env())
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert validated.stdout.startswith("Pulumi.prod.yaml: valid — app prod/web")


def test_the_console_script_of_the_wheels_entry_point_runs(venv: Path, outside: Path) -> None:
    helped = _run([venv / "bin" / "canary", "--help"], cwd=outside, env=_clean_env())
    assert helped.returncode == 0, helped.stderr
    assert "validate" in helped.stdout


def test_an_invalid_stack_file_is_refused_by_the_installed_cli(venv: Path, outside: Path) -> None:
    """The exit code is the installed CLI's own (2, bad input), not a traceback's 1."""
    stack_file = outside / "Pulumi.bad.yaml"
    stack_file.write_text((ROOT / "stacks" / "Pulumi.prod.yaml").read_text().replace("replicas: 4", "replicas: 0"))
    result = _run([venv / "bin" / "python", "-m", "canary", "validate", "--file", stack_file], cwd=outside, env=_clean_env())
    assert result.returncode == 2, result.stdout + result.stderr
    assert "replicas" in result.stderr and "Traceback" not in result.stderr


def test_the_dev_venv_is_not_what_the_new_venv_imports(venv: Path, outside: Path) -> None:
    """The guard of the tests above: the editable install's finder must not be active in the new venv."""
    result = _run([venv / "bin" / "python", "-c", "import sys; print('\\n'.join(sys.path))"], cwd=outside, env=_clean_env())
    paths = result.stdout.splitlines()
    assert str(ROOT) not in paths and str(SOURCE) not in paths
    assert not [p for p in paths if "__editable__" in p]
    finder = _run([venv / "bin" / "python", "-c", "import sys; print(any('editable' in type(f).__module__ for f in sys.meta_path))"],
                  cwd=outside, env=_clean_env())
    assert finder.returncode == 0 and finder.stdout.strip() == "False"
