"""python -m app.keys: the command lives with the other entry points (app.cli.keys)."""

import sys

from app.cli.keys import main

if __name__ == "__main__":
    sys.exit(main())
