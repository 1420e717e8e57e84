"""The composition root: settings and the one DeclarativeContainer."""

from container.containers import Container
from container.settings import Settings

__all__ = ["Container", "Settings"]
