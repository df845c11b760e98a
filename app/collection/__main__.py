"""python -m app.collection: the command lives with the other entry points (app.cli.collection)."""

import sys

from app.cli.collection import main
from app.config import private_files

private_files()
sys.exit(main())
