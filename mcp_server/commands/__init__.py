"""CLI subcommands, one module per command group; each imports heavy modules lazily."""
