"""The `python -m app.keys` command: create, list and revoke the service's API keys (STATE_DIR/keys.sqlite3).

It works on the file directly, with or without the service running: a running service picks up a change within
a few seconds, without a restart. `create` prints the new key alone on the last line of stdout (everything else
goes to stderr), so that `KEY=$(python -m app.keys create ...)` keeps just the key; it is never shown again."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from app.access import KEYS_FILE, KeyStore, Scope
from app.config import Settings
from app.errors import OceanoError

EXIT_OK = 0
EXIT_FAILED = 1
SCOPES = ", ".join(s.value for s in Scope)

EPILOG = f"""\
scopes: search (search, analyze, heads, thumbnails, the page's form, /status), write (index and delete faces,
ingest jobs), admin (everything, and key management). While no key exists, write and admin routes answer
clients on this machine only; once one exists, they need a key. Clients send it as `X-API-Key: KEY` or
`Authorization: Bearer KEY`.

examples:
  python -m app.keys create --name importer --scope write
  python -m app.keys create --name ops --scope admin
  python -m app.keys list
  python -m app.keys revoke importer

The keys live in STATE_DIR/{KEYS_FILE} (STATE_DIR from the environment, as for the service).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.keys",
        epilog=EPILOG,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Manage the API keys of an Oceano service.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{create,list,revoke}")
    create = commands.add_parser(
        "create",
        help="create a key and print it (once)",
        allow_abbrev=False,
        description="Create a key. The key is printed alone on the last line of stdout, "
        "and never shown again: only its hash is stored.",
    )
    create.add_argument("--name", required=True, help="a name for logs and revocation (letters, digits, . _ -)")
    create.add_argument(
        "--scope", action="append", required=True, metavar="SCOPE", help=f"{SCOPES}; repeatable (or comma-separated)"
    )
    commands.add_parser(
        "list",
        help="list the keys (never the keys themselves)",
        allow_abbrev=False,
        description="Name, scopes, creation and last use of every key.",
    )
    revoke = commands.add_parser(
        "revoke",
        help="revoke a key",
        allow_abbrev=False,
        description="Revoke a key: a running service refuses it within seconds.",
    )
    revoke.add_argument("name", help="the key's name")
    return parser


def _when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z") if timestamp else "never"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = Settings().state_dir / KEYS_FILE
    store = KeyStore(path)
    try:
        if args.command == "create":
            info, key = store.create(args.name, args.scope)
            print(
                f"created API key {info.name!r} (scopes: {', '.join(info.scope_list)}) in {path}. It is shown "
                "this once; a running service accepts it within seconds. Send it as `X-API-Key: KEY`:",
                file=sys.stderr,
            )
            print(key, flush=True)
        elif args.command == "list":
            rows = [(i.name, ",".join(i.scope_list), _when(i.created), _when(i.last_used)) for i in store.list()]
            if not rows:
                print(f"no API keys in {path}: write routes answer clients on this machine only", file=sys.stderr)
            header = ("NAME", "SCOPES", "CREATED", "LAST USED")
            widths = [max(len(r[c]) for r in [header, *rows]) for c in range(4)]
            for row in [header, *rows] if rows else []:
                print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        else:
            info = store.revoke(args.name)
            print(f"revoked API key {info.name!r}; a running service refuses it within seconds", file=sys.stderr)
    except OceanoError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    return EXIT_OK
