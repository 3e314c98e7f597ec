"""``python app -i ... -o ... -m ...`` (and the MAP entry point): run the app, exit with its status."""

import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
sys.path.insert(0, str(_here.parent))
sys.path.append(str(_here))  # a packager's --add copies extra packages (bundle/) into the app folder

from app.app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
