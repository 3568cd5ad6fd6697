"""Where the tests find the repository and the fixture model packages, wherever a test module sits."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_PACKAGES = REPO_ROOT / "tests" / "model_packages"
