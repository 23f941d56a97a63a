"""The locks (requirements/*.txt) are what every install uses, so two machines get the same
versions: every package pinned `==` with hashes, the pins satisfy pyproject.toml (extras
included), dev agrees with runtime, and the Makefile and the Dockerfile install only from them.
Read as files; the installed packages' metadata answers which packages an extra brings."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from harness import REPO
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REQUIREMENTS = REPO / "requirements"
# The platform the locks are for (make lock: --python-version 3.12 --python-platform linux).
ENVIRONMENT = {
    "python_version": "3.12",
    "python_full_version": "3.12.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def lock(name: str) -> dict[str, tuple[Version, frozenset[str]]]:
    """Package -> (pinned version, hashes); fails on any entry that is not `name==version`
    with at least one sha256 hash (a range, a URL, an editable, an option line)."""
    text = (REQUIREMENTS / name).read_text()
    entries = re.sub(r"\\\n", " ", text).splitlines()
    out: dict[str, tuple[Version, frozenset[str]]] = {}
    for raw in entries:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = line.split()
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^=;\s]+)", spec)
        assert match, f"{name}: {spec!r} is not pinned with =="
        hashes = frozenset(o.removeprefix("--hash=") for o in options if o.startswith("--hash="))
        assert hashes and len(hashes) == len(options), f"{name}: {spec} without only hashes"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), spec
        key = canonicalize_name(match.group(1))
        assert key not in out, f"{name}: {key} twice"
        out[key] = (Version(match.group(2)), hashes)
    assert out, f"{name} is empty"
    return out


def unmet(requirements: list[str], pins: dict[str, tuple[Version, frozenset[str]]]) -> list[str]:
    """The requirements (and the packages their extras bring) the pins do not satisfy."""
    problems = []
    for text in requirements:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate(ENVIRONMENT):
            continue
        key = canonicalize_name(req.name)
        if key not in pins:
            problems.append(f"{req}: not in the lock")
            continue
        if not req.specifier.contains(pins[key][0], prereleases=True):
            problems.append(f"{req}: the lock pins {pins[key][0]}")
        for extra in req.extras:
            brought = [
                r.split(";")[0]
                for r in metadata.requires(req.name) or []
                if ";" in r and Marker(r.split(";", 1)[1]).evaluate(ENVIRONMENT | {"extra": extra})
            ]
            assert brought, f"{req}: the extra {extra} brings nothing (metadata)"
            problems += unmet(brought, pins)
    return problems


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_runtime_lock_satisfies_the_dependencies() -> None:
    assert unmet(pyproject()["project"]["dependencies"], lock("runtime.txt")) == []


def test_dev_lock_satisfies_both_and_agrees_with_runtime() -> None:
    project = pyproject()["project"]
    dev = lock("dev.txt")
    needed = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert unmet(needed, dev) == []
    for name, pinned in lock("runtime.txt").items():
        assert dev.get(name) == pinned, f"{name}: runtime {pinned[0]}, dev {dev.get(name)}"
    assert "scrapy" in dev and "scrapy" not in lock("runtime.txt")  # make run stays lean


def test_build_lock_satisfies_the_build_system() -> None:
    build = lock("build.txt")
    assert unmet(pyproject()["build-system"]["requires"], build) == []
    assert set(build) == {"pip", "setuptools"}


def test_license_is_an_spdx_string_with_its_file() -> None:
    project = pyproject()["project"]
    assert project["license"] == "MIT"
    assert all((REPO / f).is_file() for f in project["license-files"])


def makefile() -> tuple[dict[str, str], dict[str, list[str]]]:
    """Variables (continuations joined) and each rule's prerequisites + recipe lines."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Makefile").read_text())
    variables: dict[str, str] = {}
    rules: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("\t") and current is not None:
            current.append(line.strip())
        elif m := re.match(r"^([A-Z_]+)\s*[:?]?=\s*(.*)$", line):
            variables[m.group(1)] = m.group(2)
            current = None
        elif m := re.match(r"^([^\s#:=][^:=]*):(?!=)\s*(.*)$", line):
            current = rules.setdefault(m.group(1).strip(), [m.group(2)])
        elif not line.startswith("\t"):
            current = None
    return variables, rules


def expand(text: str, variables: dict[str, str]) -> str:
    for _ in range(5):
        text = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), text)
    return text


def test_makefile_installs_only_from_the_locks() -> None:
    variables, rules = makefile()
    runtime_stamp = expand("$(RUNTIME_STAMP)", variables)
    dev_stamp = expand("$(DEV_STAMP)", variables)
    installs = {
        expand(stamp, variables): [expand(x, variables) for x in rules[stamp][1:]]
        for stamp in ("$(RUNTIME_STAMP)", "$(DEV_STAMP)")
    }
    for stamp, recipe in installs.items():
        pips = [x for x in recipe if "pip install" in x]
        assert pips, stamp
        for command in pips:
            locked = "--require-hashes -r requirements/" in command
            assert locked or ("--no-deps" in command and command.endswith("-e .")), command
    runtime = " ".join(installs[runtime_stamp])
    assert "requirements/runtime.txt" in runtime and "dev.txt" not in runtime
    assert "requirements/dev.txt" in " ".join(installs[dev_stamp])
    assert runtime_stamp in expand(rules["run"][0], variables)
    for target in ("check", "test", "lint"):
        assert dev_stamp in expand(rules[target][0], variables), target
    assert ".[dev]" not in (REPO / "Makefile").read_text()
    lock_recipe = " ".join(expand(x, variables) for x in rules["lock"][1:])
    for name in ("runtime.txt", "dev.txt", "build.txt"):
        assert f"-o requirements/{name}" in lock_recipe and "--generate-hashes" in lock_recipe


@pytest.mark.parametrize("name", ["runtime.txt", "dev.txt", "build.txt"])
def test_lock_header_names_make_lock(name: str) -> None:
    assert "#    make lock" in (REQUIREMENTS / name).read_text().split("\n", 3)[1]


def test_dockerfile_installs_the_runtime_lock_with_the_builtin_frontend() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert not re.search(r"(?im)^#\s*syntax\s*=", text), "a # syntax= line pulls a frontend"
    code = [x for x in text.splitlines() if not x.lstrip().startswith("#")]
    assert not [x for x in code if "--mount" in x]  # the classic builder has no RUN --mount
    joined = re.sub(r"\\\n\s*", " ", "\n".join(code))
    pips = [x for x in joined.splitlines() if "pip install" in x]
    assert any("--require-hashes" in x and "requirements/runtime.txt" in x for x in pips)
    for command in re.findall(r"pip install[^&]*", " ".join(pips)):
        assert "--require-hashes" in command or "--no-deps" in command, command


def test_lock_files_are_what_the_image_context_carries() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "!requirements/runtime.txt" in ignore and "!requirements/build.txt" in ignore
    assert "!requirements/dev.txt" not in ignore


def test_installed_versions_are_the_dev_locks() -> None:
    """This venv (make check installs the dev lock) has exactly the locked versions."""
    for name, (version, _) in lock("dev.txt").items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is locked but not installed: run make check")
        assert installed == version, f"{name}: installed {installed}, locked {version}"


def test_lock_parser_refuses_an_unpinned_entry(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("aiohttp>=3.12 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    global REQUIREMENTS
    saved, REQUIREMENTS = REQUIREMENTS, tmp_path
    try:
        with pytest.raises(AssertionError, match="not pinned"):
            lock("bad.txt")
        bad.write_text("aiohttp==3.14.5\n")
        with pytest.raises(AssertionError, match="without only hashes"):
            lock("bad.txt")
    finally:
        REQUIREMENTS = saved
