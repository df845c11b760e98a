"""python -m app.collection: the command lives with the other entry points (app.cli.collection)."""

import sys

from app.cli.collection import main

sys.exit(main())
