"""What the soak's traffic indexed and deleted (ids from the answers), and what it could not know: the record
the integrity check compares the service with."""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import threading
from collections import defaultdict
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)
UPLOADS_PER_SUBJECT = 3
GONE_KEYS = 10_000_000  # variant keys of the uploads whose client disconnects


# ------------------------------------------------------------------------------------------------ ledger
@dataclass
class Upload:
    key: int
    photo: int
    source: str
    subject: str
    sha: str
    state: str = "pending"  # pending | stored | refused | uncertain
    ids: list[str] = field(default_factory=list)  # from the answer
    live: set[str] = field(default_factory=set)  # ids not deleted
    busy: bool = False  # a delete of its faces is in flight
    group: int | None = None  # subject group (None: a disconnected upload, its own subject)


class Ledger:
    """What this run indexed and deleted, as the service's answers say. One lock; deletes pick only faces whose
    upload is answered and not busy, so that the expected result of every delete is known exactly."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.lock = threading.Lock()
        self.uploads: dict[int, Upload] = {}
        self.groups: dict[int, list[int]] = defaultdict(list)
        self.deleted: set[str] = set()
        self.anomalies: list[str] = []
        self._keys = itertools.count()
        self._gone_keys = itertools.count()
        self._gone = itertools.count()

    def new_key(self, *, gone: bool = False) -> int:
        """A new variant key; disconnected uploads draw theirs from another range, so that every subject group
        of ordinary uploads fills up."""
        with self.lock:
            return GONE_KEYS + next(self._gone_keys) if gone else next(self._keys)

    def add(self, key: int, photo: int, data: bytes, *, gone: bool = False) -> Upload:
        with self.lock:
            if gone:
                n = next(self._gone)
                upload = Upload(
                    key,
                    photo,
                    f"soak/{self.run}/gone-{n}.jpg",
                    f"soak-{self.run}-gone-{n}",
                    hashlib.sha256(data).hexdigest(),
                    state="uncertain",
                )
            else:
                group = key // UPLOADS_PER_SUBJECT
                upload = Upload(
                    key,
                    photo,
                    f"soak/{self.run}/{key}.jpg",
                    f"soak-{self.run}-s{group}",
                    hashlib.sha256(data).hexdigest(),
                    group=group,
                )
                self.groups[group].append(key)
            self.uploads[key] = upload
            return upload

    def answered(self, upload: Upload, state: str, ids: list[str] | None = None) -> None:
        with self.lock:
            upload.state = state
            if ids is not None:
                upload.ids = list(ids)
                upload.live = set(ids)

    def anomaly(self, text: str) -> None:
        with self.lock:
            self.anomalies.append(text)
        logger.warning("anomaly: %s", text)

    # Picking deletes: the uploads picked are marked busy until the answer is booked (deleted_ok, uncertain).
    def pick_id(self, rng: random.Random) -> tuple[Upload, str] | None:
        with self.lock:
            ready = [u for u in self.uploads.values() if u.state == "stored" and u.live and not u.busy]
            if not ready:
                return None
            upload = rng.choice(ready)
            upload.busy = True
            return upload, rng.choice(sorted(upload.live))

    def pick_file(self, rng: random.Random) -> Upload | None:
        with self.lock:
            ready = [u for u in self.uploads.values() if u.state == "stored" and u.live and not u.busy]
            if not ready:
                return None
            upload = rng.choice(ready)
            upload.busy = True
            return upload

    def pick_subject(self, rng: random.Random) -> list[Upload] | None:
        """A subject whose uploads are all answered (and no more will come), none uncertain or busy, some live."""
        with self.lock:
            ready = []
            for keys in self.groups.values():
                ups = [self.uploads[k] for k in keys]
                if (
                    len(ups) == UPLOADS_PER_SUBJECT
                    and all(u.state in ("stored", "refused") and not u.busy for u in ups)
                    and any(u.live for u in ups)
                ):
                    ready.append(ups)
            if not ready:
                return None
            chosen = rng.choice(ready)
            for u in chosen:
                u.busy = True
            return chosen

    def deleted_ok(self, uploads: list[Upload], expected: set[str], answer: list[str], what: str) -> None:
        """Book a delete answered 200. When it named other faces than expected, that is an anomaly, and every
        upload it touched is resolved from the service at the end."""
        with self.lock:
            got = set(answer)
            touched = uploads
            if got != expected:
                self.anomalies.append(
                    f"{what}: answer named {len(got)} faces, the ledger expected {len(expected)} "
                    f"(unexpected {sorted(got - expected)[:3]}, missing "
                    f"{sorted(expected - got)[:3]})"
                )
                keys = {u.key for u in uploads}
                touched = [u for u in self.uploads.values() if u.key in keys or u.live & got]
            for u in touched:
                u.live -= got
                u.busy = False
                if got != expected:
                    u.state = "uncertain"
            self.deleted |= got

    def uncertain(self, uploads: list[Upload]) -> None:
        with self.lock:
            for u in uploads:
                u.state, u.busy = "uncertain", False
