"""Where the shipped policy packs and Avro schemas live."""

from __future__ import annotations

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def policies_dir() -> Path:
    """The folder of the five seed packs (override with PRIVACY_PIPELINE_POLICIES)."""
    return Path(os.environ.get("PRIVACY_PIPELINE_POLICIES", _ROOT / "policies"))


def schemas_dir() -> Path:
    """The folder of the Avro schemas."""
    return Path(os.environ.get("PRIVACY_PIPELINE_SCHEMAS", _ROOT / "schemas"))
