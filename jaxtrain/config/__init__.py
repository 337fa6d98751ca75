"""The config: the schema of every section (data options included), loading, overrides, cross-section rules."""
