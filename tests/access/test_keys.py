"""KeyStore: hashed keys, scopes, two processes on one file, last-used times written back sparingly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.access import KeyStore, Scope
from app.access.keys import key_hash
from app.errors import Conflict, InvalidRequest, NotFound
from tests.support import REPO


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    opened = KeyStore(tmp_path / "keys.sqlite3", check_every=0.05, touch_every=0.3)
    yield opened  # type: ignore[misc]
    opened.close()


def test_keys_are_random_stored_hashed_and_shown_once(store: KeyStore, tmp_path: Path) -> None:
    info, key = store.create("ci", ["write"])
    _, other = store.create("ops", ["admin"])
    assert key.startswith("oc_") and len(key) >= 46 and key != other
    assert store.authenticate(key) == info and store.authenticate(key + "x") is None
    assert store.authenticate("oc_" + "A" * 43) is None and store.authenticate("not a key") is None
    rows = store._db.execute("SELECT * FROM api_keys").fetchall()
    assert key_hash(key) in {r[1] for r in rows} and not any(key in map(str, r) for r in rows)
    assert oct((tmp_path / "keys.sqlite3").stat().st_mode & 0o777) == "0o600"
    assert [i.name for i in store.list()] == ["ci", "ops"]


def test_scopes_and_names(store: KeyStore) -> None:
    info, _ = store.create("both", ["search,write"])
    assert info.allows(Scope.SEARCH) and info.allows(Scope.WRITE) and not info.allows(Scope.ADMIN)
    admin, _ = store.create("root", ["admin"])
    assert all(admin.allows(s) for s in Scope)
    with pytest.raises(InvalidRequest, match="unknown scope"):
        store.create("x", ["superuser"])
    with pytest.raises(InvalidRequest, match="at least one scope"):
        store.create("x", [])
    with pytest.raises(InvalidRequest, match="key name"):
        store.create("../x", ["search"])
    with pytest.raises(Conflict):
        store.create("both", ["search"])
    with pytest.raises(NotFound):
        store.revoke("nobody")


def test_another_process_changes_are_picked_up(store: KeyStore, tmp_path: Path) -> None:
    store.watch()
    env = {**os.environ, "STATE_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    made = subprocess.run(
        [sys.executable, "-m", "app.keys", "create", "--name", "ci", "--scope", "write"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = made.stdout.strip()
    deadline = time.monotonic() + 5
    while store.authenticate(key) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert store.has_keys()
    subprocess.run(
        [sys.executable, "-m", "app.keys", "revoke", "ci"], env=env, timeout=60, check=True, capture_output=True
    )
    while store.authenticate(key) is not None:
        assert time.monotonic() < deadline + 5
        time.sleep(0.02)
    assert not store.has_keys()


def test_last_used_is_written_back_every_few_seconds_not_per_use(store: KeyStore) -> None:
    _, key = store.create("ci", ["write"])
    for _ in range(50):
        assert store.authenticate(key) is not None
    stored = store._db.execute("SELECT last_used FROM api_keys").fetchone()[0]
    assert stored is None  # not written per request...
    assert store.list()[0].last_used is not None  # ... but shown
    store.watch()
    deadline = time.monotonic() + 5
    while store._db.execute("SELECT last_used FROM api_keys").fetchone()[0] is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_replaced_file_is_reopened(store: KeyStore, tmp_path: Path) -> None:
    _, key = store.create("ci", ["write"])
    restored = KeyStore(tmp_path / "restored" / "keys.sqlite3")  # another file (a backup) put in its place
    _, other = restored.create("backup", ["search"])
    restored.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'keys.sqlite3'}{suffix}").unlink(missing_ok=True)
    os.replace(tmp_path / "restored" / "keys.sqlite3", tmp_path / "keys.sqlite3")
    assert store.refresh() and store.authenticate(key) is None
    found = store.authenticate(other)
    assert found is not None and found.name == "backup"


def test_a_keys_file_deleted_under_the_service_keeps_the_loaded_keys(
    store: KeyStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, key = store.create("ci", ["write"])
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'keys.sqlite3'}{suffix}").unlink(missing_ok=True)
    with caplog.at_level("ERROR", logger="app.access.keys"):
        assert not store.refresh() and not store.refresh()
    assert store.has_keys() and store.authenticate(key) is not None  # not dropped into protected mode
    assert not (tmp_path / "keys.sqlite3").exists()  # and no empty file made in its place
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "deleted" in errors[0].getMessage()  # said once, not every second
    # Keys created again (python -m app.keys writes a new file): those apply.
    again = KeyStore(tmp_path / "keys.sqlite3")
    _, new_key = again.create("new", ["search"])
    again.close()
    assert store.refresh() and store.authenticate(key) is None and store.authenticate(new_key) is not None
