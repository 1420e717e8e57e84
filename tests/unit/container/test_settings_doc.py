"""docs/configuration.md names every setting the code has, and no setting it doesn't."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from container.settings import Settings

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def setting_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= {f"GOLDENPATH_{name.upper()}__{sub.upper()}" for sub in annotation.model_fields}
        else:
            names.add(f"GOLDENPATH_{name.upper()}")
    return names


def test_configuration_doc_matches_the_settings() -> None:
    documented = set(re.findall(r"^\| `(GOLDENPATH_[A-Z0-9_]+)`", DOC.read_text(), re.MULTILINE))
    assert documented == setting_names()


def test_nested_settings_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("GOLDENPATH_DATABASE__URL", "postgresql+asyncpg://u@h/db")
    monkeypatch.setenv("GOLDENPATH_LIMITS__MAX_ENGINES_PER_USER", "9")
    settings = Settings(_env_file=None)
    assert settings.database.url == "postgresql+asyncpg://u@h/db"
    assert settings.limits.max_engines_per_user == 9
