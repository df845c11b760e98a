"""python -m app.calibrate: the command lives with the other entry points (app.cli.calibrate)."""

import sys

from app.cli.calibrate import main
from app.config import private_files

if __name__ == "__main__":
    private_files()
    sys.exit(main())
