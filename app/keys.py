"""python -m app.keys: the command lives with the other entry points (app.cli.keys)."""

import sys

from app.cli.keys import main
from app.config import private_files

if __name__ == "__main__":
    private_files()
    sys.exit(main())
