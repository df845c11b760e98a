"""Labelled photos (`file,identity` CSV) and the genuine / impostor pairs built from their embeddings."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class LabelledFace:
    file: str
    identity: str


@dataclass(frozen=True, slots=True)
class Pairs:
    """Every pair of embedded faces: indices into `files`, their cosine similarity and whether they share an
    identity."""

    files: list[str]
    first: np.ndarray
    second: np.ndarray
    scores: np.ndarray
    same: np.ndarray

    @property
    def genuine(self) -> int:
        return int(self.same.sum())

    @property
    def impostor(self) -> int:
        return int((~self.same).sum())


def read_labels(path: Path) -> list[LabelledFace]:
    """A CSV with a header naming `file` and `identity` columns (as ../shared/eval/faces-a/labels.csv)."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"file", "identity"} <= set(reader.fieldnames):
                raise InvalidRequest(f"{path}: a labels file needs the columns file,identity (got {reader.fieldnames})")
            rows = [LabelledFace(file=r["file"].strip(), identity=r["identity"].strip()) for r in reader]
    except OSError as exc:
        raise InvalidRequest(f"cannot read the labels file {path}: {exc.strerror}") from exc
    rows = [r for r in rows if r.file and r.identity]
    if len({r.file for r in rows}) != len(rows):
        raise InvalidRequest(f"{path}: a file is labelled twice")
    return rows


def build_pairs(files: list[str], identities: list[str], embeddings: np.ndarray) -> Pairs:
    """All unordered pairs of the embedded faces (n (n - 1) / 2; fine up to some thousands of faces)."""
    if len(files) != len(identities) or len(files) != len(embeddings):
        raise ValueError("one identity and one embedding per file")
    first, second = np.triu_indices(len(files), k=1)
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    scores = np.einsum("ij,ij->i", unit[first], unit[second])
    labels = np.asarray(identities)
    return Pairs(files=files, first=first, second=second, scores=scores, same=labels[first] == labels[second])
