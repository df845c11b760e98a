"""The head registry: the built-in heads (emotion; genderage when the model pack has genderage.onnx) and the
user's heads from HEADS_DIR, which of them run by default (HEADS), and selection by name."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from app.engine.model import log_warm_up
from app.engine.runtime import Runtime
from app.errors import ModelPackError, NoSuchHead
from app.heads.head import Head, dims
from app.heads.spec import GENDERAGE, SPEC_SUFFIXES, HeadSpec, genderage_spec, read_spec

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "heads"


@dataclass(frozen=True, slots=True)
class HeadListing:
    """A head as GET /api/heads shows it: loaded, or known but unavailable (and why)."""

    spec: HeadSpec
    origin: str
    head: Head | None = None
    reason: str | None = None
    default: bool = False

    @property
    def available(self) -> bool:
        return self.head is not None


def parse_names(names: str) -> list[str]:
    """'emotion, genderage' -> ['emotion', 'genderage'] (order kept, repeats dropped)."""
    out: list[str] = []
    for part in names.split(","):
        name = part.strip()
        if name and name not in out:
            out.append(name)
    return out


class HeadRegistry:
    def __init__(self, listings: Iterable[HeadListing] = ()) -> None:
        self._listings = {entry.spec.name: entry for entry in listings}

    @classmethod
    def load(
        cls,
        *,
        defaults: str,
        heads_dir: Path | None,
        genderage: Path | None,
        pack_name: str,
        runtime: Runtime,
        batch_sizes: Sequence[int],
    ) -> HeadRegistry:
        """Built-in heads, then HEADS_DIR (a user head of the same name replaces a built-in one). Any bad spec
        or model is a ModelPackError naming the file; an absent genderage.onnx only marks genderage
        unavailable. Each head is warmed at every batch size as it loads."""

        def load_head(spec: HeadSpec, path: Path, origin: str) -> Head:
            return Head(spec, path, runtime=runtime, batch_sizes=batch_sizes, origin=origin)

        found: dict[str, tuple[HeadSpec, Path, str]] = {}
        emotion = read_spec(ASSETS_DIR / "emotion.json")
        found[emotion.name] = (emotion, ASSETS_DIR / (emotion.model or "emotion.onnx"), "built-in")
        unavailable: dict[str, HeadListing] = {}
        if genderage is not None:
            found[GENDERAGE] = (genderage_spec(_static_size(genderage)), genderage, f"model pack {pack_name}")
        else:
            unavailable[GENDERAGE] = HeadListing(
                spec=genderage_spec(),
                origin=f"model pack {pack_name}",
                reason=f"model pack '{pack_name}' has no genderage.onnx (antelopev2 and buffalo_l have it)",
            )
        if heads_dir is not None:
            user: dict[str, Path] = {}
            for spec, path in _user_specs(heads_dir):
                if spec.name in user:
                    raise ModelPackError(
                        f"head spec {path}: head name {spec.name!r} is already used by {user[spec.name]}"
                    )
                if spec.name in found or spec.name in unavailable:
                    logger.warning("head %s from %s replaces the built-in head of that name", spec.name, path)
                user[spec.name] = path
                unavailable.pop(spec.name, None)
                found[spec.name] = (spec, heads_dir / (spec.model or path.with_suffix(".onnx").name), str(path))

        listings = [
            HeadListing(spec=spec, origin=origin, head=load_head(spec, model, origin))
            for spec, model, origin in found.values()
        ]
        _check_keys(listings)
        log_warm_up("the heads", {e.spec.name: e.head.warmed for e in listings if e.head is not None})
        registry = cls([*listings, *unavailable.values()])
        registry._set_defaults(defaults)
        for entry in registry._listings.values():
            if entry.head is not None:
                logger.info(
                    "head %s loaded from %s (%s, %d parameters)%s",
                    entry.spec.name,
                    entry.head.path,
                    entry.origin,
                    entry.head.info.parameters,
                    " [default]" if entry.default else "",
                )
        return registry

    def _set_defaults(self, defaults: str) -> None:
        chosen = []
        for name in parse_names(defaults):
            entry = self._listings.get(name)
            if entry is None:
                raise ModelPackError(f"HEADS names an unknown head {name!r}; known heads: {self._known()}")
            if entry.head is None:
                logger.warning("HEADS names %s, which is unavailable (%s): not run by default", name, entry.reason)
                continue
            chosen.append(name)
        for name, entry in self._listings.items():
            self._listings[name] = replace(entry, default=name in chosen)

    def _known(self) -> str:
        return ", ".join(self._listings) or "none"

    def available(self) -> list[str]:
        return [name for name, entry in self._listings.items() if entry.head is not None]

    def listings(self) -> list[HeadListing]:
        return list(self._listings.values())

    def listing(self, name: str) -> HeadListing:
        entry = self._listings.get(name)
        if entry is None:
            raise NoSuchHead(f"unknown head {name!r}; heads: {self._known()}")
        return entry

    def select(self, names: str | None) -> list[Head]:
        """Heads by comma-separated names; None means the default heads (HEADS), '' means none."""
        if names is None:
            return [e.head for e in self._listings.values() if e.default and e.head is not None]
        heads = []
        for name in parse_names(names):
            entry = self._listings.get(name)
            available = ", ".join(self.available()) or "none"
            if entry is None:
                raise NoSuchHead(f"unknown head {name!r}; available heads: {available}")
            if entry.head is None:
                raise NoSuchHead(f"head {name!r} is unavailable: {entry.reason}; available heads: {available}")
            heads.append(entry.head)
        return heads


def _static_size(path: Path) -> tuple[int, int]:
    """A genderage model's (width, height) as it declares it (InsightFace's are 96x96)."""
    try:
        declared = dims(onnx.load(str(path), load_external_data=False).graph.input[0])
    except Exception as exc:  # protobuf raises several unrelated types on garbage
        raise ModelPackError(f"head 'genderage' ({path}): not a readable ONNX model: {exc}") from exc
    if len(declared) == 4 and isinstance(declared[2], int) and isinstance(declared[3], int):
        return declared[3], declared[2]
    return 96, 96


def _user_specs(heads_dir: Path) -> list[tuple[HeadSpec, Path]]:
    if not heads_dir.is_dir():
        raise ModelPackError(f"HEADS_DIR {heads_dir} is not a folder")
    specs = [(read_spec(p), p) for p in sorted(heads_dir.iterdir()) if p.suffix.lower() in SPEC_SUFFIXES]
    used = {(s.model or p.with_suffix(".onnx").name) for s, p in specs}
    for orphan in sorted(p.name for p in heads_dir.glob("*.onnx") if p.name not in used):
        logger.warning("HEADS_DIR %s: %s has no spec naming it; ignored (add a .json spec)", heads_dir, orphan)
    return specs


def _check_keys(listings: Sequence[HeadListing]) -> None:
    owner: dict[str, str] = {}
    for entry in listings:
        for key in entry.spec.output_keys:
            if key in owner:
                raise ModelPackError(
                    f"head {entry.spec.name!r} ({entry.origin}) and head {owner[key]!r} both "
                    f"answer {key!r}; rename one or remove it"
                )
            owner[key] = entry.spec.name
