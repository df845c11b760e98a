"""The hash-locked requirements (requirements/*.txt, `make lock`) agree with pyproject.toml, and the image installs
from them. Static checks on the files only: no network, no install."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
REQS = REPO / "requirements"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCKS = {"cpu": REQS / "cpu.txt", "gpu": REQS / "gpu.txt"}
# Packages gpu.txt leaves out on purpose: onnxruntime-gpu provides the same module (requirements/README.md).
GPU_OMITS = {"onnxruntime"}


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    hashes: tuple[str, ...]
    line: str


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined, comments and blanks dropped."""
    out: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            out.append(" ".join(buf.split()))
        buf = ""
    if buf.strip():
        out.append(" ".join(buf.split()))
    return out


def parse_lock(path: Path) -> tuple[list[str], dict[str, Pin]]:
    """(option lines, pins by canonical name). Fails on anything that is neither."""
    options: list[str] = []
    pins: dict[str, Pin] = {}
    for line in logical_lines(path.read_text()):
        if line.startswith("-"):
            options.append(line)
            continue
        spec, *rest = line.split(" --hash=")
        req = Requirement(spec)
        exact = [s for s in req.specifier if s.operator == "=="]
        assert len(exact) == 1 and len(req.specifier) == 1, f"{path.name}: not an exact pin: {line[:80]}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = Pin(name, Version(exact[0].version), tuple(rest), line)
    return options, pins


def runtime_requirements(extras: tuple[str, ...] = ()) -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    return reqs


def build_requirements() -> list[Requirement]:
    return [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]


EXPECTED = {  # what each lock must hold, straight from pyproject.toml
    "cpu": runtime_requirements() + build_requirements(),
    "gpu": [r for r in runtime_requirements(("gpu",)) if canonicalize_name(r.name) not in GPU_OMITS]
    + build_requirements(),
}


@pytest.fixture(scope="module", params=sorted(LOCKS))
def lock(request: pytest.FixtureRequest) -> tuple[str, list[str], dict[str, Pin]]:
    path = LOCKS[request.param]
    assert path.exists(), f"{path.relative_to(REPO)} is missing: run `make lock`"
    options, pins = parse_lock(path)
    return request.param, options, pins


def test_every_dependency_is_pinned(lock: tuple[str, list[str], dict[str, Pin]]) -> None:
    kind, _, pins = lock
    missing = sorted({canonicalize_name(r.name) for r in EXPECTED[kind]} - set(pins))
    assert not missing, f"requirements/{kind}.txt lacks {missing}: run `make lock`"


def test_every_pin_has_sha256_hashes(lock: tuple[str, list[str], dict[str, Pin]]) -> None:
    kind, _, pins = lock
    assert pins
    for pin in pins.values():
        assert pin.hashes, f"requirements/{kind}.txt: {pin.name} has no --hash"
        for h in pin.hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", h), f"requirements/{kind}.txt: {pin.name}: bad hash {h!r}"


def test_pins_satisfy_pyproject(lock: tuple[str, list[str], dict[str, Pin]]) -> None:
    """Each pin lies inside pyproject's range: at or above the floor, below any cap."""
    kind, _, pins = lock
    for req in EXPECTED[kind]:
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            continue  # reported by test_every_dependency_is_pinned
        assert req.specifier.contains(pin.version, prereleases=True), (
            f"requirements/{kind}.txt pins {pin.name}=={pin.version}, outside pyproject's {req}: run `make lock`"
        )


def test_locks_are_wheel_only_and_say_how_to_regenerate(lock: tuple[str, list[str], dict[str, Pin]]) -> None:
    kind, options, _ = lock
    assert "--only-binary :all:" in options, f"requirements/{kind}.txt may build sdists"
    head = LOCKS[kind].read_text().splitlines()[:3]
    assert any("make lock" in line and "uv pip compile" in line for line in head), head


def test_gpu_lock_swaps_the_runtime() -> None:
    """gpu.txt: everything cpu.txt holds, except onnxruntime, replaced by onnxruntime-gpu."""
    _, cpu = parse_lock(LOCKS["cpu"])
    _, gpu = parse_lock(LOCKS["gpu"])
    assert "onnxruntime" not in gpu, "gpu.txt must not install onnxruntime next to onnxruntime-gpu"
    assert "onnxruntime-gpu" in gpu and "onnxruntime-gpu" not in cpu
    assert set(cpu) - GPU_OMITS <= set(gpu), sorted(set(cpu) - GPU_OMITS - set(gpu))


def test_build_in_matches_build_system() -> None:
    """requirements/build.in feeds the locks the build backend that `pip install --no-build-isolation` relies on."""
    build_in = {canonicalize_name(Requirement(line).name) for line in logical_lines((REQS / "build.in").read_text())}
    assert build_in == {canonicalize_name(r.name) for r in build_requirements()}


# ------------------------------------------------------------------------------------------------- Dockerfile


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions (keyword, arguments) per named stage, continuations joined, comments dropped."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    buf = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        text = " ".join((buf + raw).split())
        buf = ""
        if not text:
            continue
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            current = stages.setdefault(m.group(1) if m else f"_{len(stages)}", [])
        current.append((keyword, args))
    return stages


def pip_installs(instructions: list[tuple[str, str]]) -> list[str]:
    cmds = [part.strip() for kw, args in instructions if kw == "RUN" for part in re.split(r"&&|;", args)]
    return [c for c in cmds if re.search(r"\bpip3? install\b", c)]


@pytest.mark.parametrize("stage", sorted(LOCKS))
def test_dockerfile_installs_from_the_lock(stage: str) -> None:
    instructions = dockerfile_stages()[stage]
    lock = f"requirements/{stage}.txt"
    installs = pip_installs(instructions)
    from_lock = [c for c in installs if f"-r {lock}" in c]
    assert from_lock, f"{stage} stage does not pip install -r {lock}"
    assert all("--require-hashes" in c for c in from_lock), from_lock
    for cmd in installs:  # anything else installs only the package itself, without pulling dependencies
        assert cmd in from_lock or ("--no-deps" in cmd and re.search(r"(-e|--editable) \.(\s|$)", cmd)), (
            f"{stage} stage installs outside the lock: {cmd}"
        )
    # The lock is copied on its own before the app, so that the dependency layer survives code changes.
    copies = [
        (i, [a.removeprefix("./").rstrip("/") for a in args.split() if not a.startswith("--")][:-1])
        for i, (kw, args) in enumerate(instructions)
        if kw == "COPY"
    ]
    lock_copy = [i for i, sources in copies if lock in sources or "requirements" in sources]
    app_copy = [i for i, sources in copies if "app" in sources]
    install_at = next(i for i, (kw, args) in enumerate(instructions) if kw == "RUN" and f"-r {lock}" in args)
    assert lock_copy and app_copy and lock_copy[0] < install_at < app_copy[0]
