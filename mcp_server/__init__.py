"""The outer shell: MCP tools and transports, settings, logging and the CLI."""
