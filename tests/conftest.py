import sys
from pathlib import Path

# The program's packages (mailfleet/, components/) and the test helpers import from the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
