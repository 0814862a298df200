"""Run Python code in a process where tnl cannot be imported: only torch, transformers & co. (the site-packages)."""

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

PRELUDE = f"""
import sys
sys.path.append({sysconfig.get_paths()["purelib"]!r})
try:
    import tnl
    sys.exit("tnl is importable: " + str(tnl.__file__))
except ImportError:
    pass
"""


def run_without_tnl(code: str, cwd: Path, modules_cache: Path, args=(), timeout: int = 300
                    ) -> subprocess.CompletedProcess:
    """`python -I -S -c code *args` (no repo on sys.path, no site .pth files, so no editable finder) with the
    site-packages appended: the code sees the installed dependencies but not tnl. HF_MODULES_CACHE points to
    `modules_cache`, so remote code is copied fresh. Fails (returns non-zero) when tnl is importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["HF_MODULES_CACHE"] = str(modules_cache)
    return subprocess.run([sys.executable, "-I", "-S", "-c", PRELUDE + textwrap.dedent(code), *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)
