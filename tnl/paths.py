"""Where the project's Hydra configs are found, for the training CLI and the benchmark tools alike."""

import os
from pathlib import Path

SOURCE_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # the source checkout's configs/


def default_config_dir() -> Path:
    """$TNL_CONFIG_DIR, else the source checkout's configs/ (editable installs), else ./configs of the working
    directory (a wheel install run from a clone, or from a copy of configs/)."""
    if os.environ.get("TNL_CONFIG_DIR"):
        return Path(os.environ["TNL_CONFIG_DIR"])
    if (SOURCE_CONFIG_DIR / "config.yaml").is_file():
        return SOURCE_CONFIG_DIR
    return Path.cwd() / "configs"
