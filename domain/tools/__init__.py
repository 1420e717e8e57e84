"""Tools the agent can call; each receives the run's context, never a user id from the model."""

from domain.tools.base import Tool, ToolBox, ToolResult

__all__ = ["Tool", "ToolBox", "ToolResult"]
