"""Output only, imported only by the CLI: rich consoles and tables, progress bars, figures, the report document."""
