"""A recipe resolved: competition.toml < recipe file < overlays and `--set` overrides, validated
into frozen dataclasses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comp.config.schema import DataConfig, Recipe, deep_merge, from_dict, parse_override, read_toml


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Recipe:
    """Load a recipe TOML, apply overlays and `key=value` overrides, validate.

    Args:
        path: a recipe .toml file; None starts from defaults.
        overrides: `section.key=value` strings; values are parsed as TOML (strings may be bare).
        base: a dict merged under the file (used by tests and tuning).

    Returns:
        The validated, frozen Recipe.
    """
    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        raw = deep_merge(raw, read_toml(path))
        raw.setdefault("name", Path(path).stem)
    for ov in overrides or []:
        raw = deep_merge(raw, parse_override(ov))
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    data_dir, train = data.get("dir", DataConfig.dir), data.get("train", "")
    if isinstance(data_dir, str) and isinstance(train, str):
        from comp.data.settings import folder_settings

        # the competition folder's competition.toml (or inferred layout) sits under the recipe
        # file and --set: both win over it
        raw = deep_merge(folder_settings(data_dir, train), raw)
    return from_dict(Recipe, raw)
