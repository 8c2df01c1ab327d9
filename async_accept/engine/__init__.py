"""The sans-IO engine."""
