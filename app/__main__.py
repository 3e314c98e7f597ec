"""``python app -i ... -o ... -m ...`` (and the MAP entry point): run the app, exit with its status."""

import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
# ``python app`` puts app/ first on the path, where app/app.py would hide the package ``app``; its parent (the project
# here, /opt/holoscan in a MAP) makes ``app`` and, locally, ``bundle`` importable. In a MAP ``bundle`` comes from
# /opt/holoscan/lib, on PYTHONPATH (``monai-deploy package --add``; docs/deploy.md).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
sys.path.insert(0, str(_here.parent))

from app.app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
