"""Every Hydra override the README shows resolves against today's configs, so the documented CLI cannot drift.

Two sources are read: the commands of its code blocks that run scripts/train.py or scripts/prepare_data.py
(composed as written), and the overrides quoted inline in backticks (`trainer.seq_len`, `deepspeed=zero0|zero1`,
`parallel.sequence=P`): alternatives are composed one by one, and a key shown without a concrete value must exist.
"""

import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tnl.config import compose

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
TOP_KEYS = {"model", "data", "optim", "deepspeed", "logger", "trainer", "parallel", "seed", "run_dir", "experiment",
            "kernels"}
GROUPS = {"model", "data", "optim", "deepspeed", "logger", "experiment"}
PLACEHOLDER = re.compile(r"^(|\.\.\.|\[\.\.\.\]|[A-Z]|<[^>]*>)$")


def _commands() -> list[tuple[str, list[str]]]:
    """(line, overrides) of each README code-block command running train.py or prepare_data.py."""
    out, in_block = [], False
    for line in README.splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        if in_block and re.search(r"scripts/(train|prepare_data)\.py", line):
            words = shlex.split(line.split(" #")[0])
            start = next(i for i, w in enumerate(words) if w.startswith("scripts/")) + 1
            out.append((line.strip(), [w for w in words[start:] if "=" in w and not w.startswith("-")]))
    return out


def _inline() -> list[str]:
    """The backticked overrides / keys of the prose, whose first name is a config section."""
    found = []
    for token in re.findall(r"`([^`\n]+)`", README):
        for word in token.split():
            key = word.split("=", 1)[0]
            if re.fullmatch(r"[a-z_]+(\.[a-z_*]+)*", key) and key.split(".")[0] in TOP_KEYS \
                    and ("=" in word or "." in key):
                found.append(word)
    return sorted(set(found))


def _has_key(cfg, key: str) -> bool:
    if key.endswith(".*"):
        key = key[:-2]
    return OmegaConf.select(cfg, key, default="__missing__") != "__missing__"


@pytest.mark.parametrize("line,overrides", _commands(), ids=lambda x: x if isinstance(x, str) else None)
def test_readme_command_composes(line, overrides):
    cfg = compose(overrides, ROOT / "configs")
    for o in overrides:
        key, value = o.split("=", 1)
        if key not in GROUPS and not value.startswith(("[", "{", "'")):
            assert str(OmegaConf.select(cfg, key)) == value or value.lower() in ("true", "false"), (line, o)


@pytest.mark.parametrize("word", _inline())
def test_readme_inline_override_resolves(word):
    key, _, value = word.partition("=")
    if key in GROUPS and value and not PLACEHOLDER.match(value):
        for option in value.split("|"):
            compose([f"{key}={option}"], ROOT / "configs")
        return
    if key in GROUPS:
        assert (ROOT / "configs" / key).is_dir(), key
        return
    base = compose([], ROOT / "configs")
    assert _has_key(base, key), f"README names {key!r}, which no config defines"
    if value and not PLACEHOLDER.match(value):
        for option in value.split("|"):
            compose([f"{key}={option}"], ROOT / "configs")


def test_readme_lists_the_core_overrides():
    """The parser finds what it should (a README reshuffle must not leave this test checking nothing)."""
    words = {w.split("=")[0] for w in _inline()}
    assert {"model", "data", "deepspeed", "trainer.max_steps", "trainer.seq_len", "run_dir"} <= words, words
    assert len(_commands()) >= 3
