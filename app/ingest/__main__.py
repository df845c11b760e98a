"""python -m app.ingest: the command lives with the other entry points (app.cli.ingest)."""

import sys

from app.cli.ingest import main
from app.config import private_files

private_files()
sys.exit(main())
