"""Tools from MCP servers (the official SDK, `mcp`): McpToolSource (source.py), the domain's
ToolSource, and NetworkGuard (guard.py), its UrlGuard and the network backend of every connection
to a user's server."""
