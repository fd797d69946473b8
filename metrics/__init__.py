"""Metric families. Importing this package registers every built-in metric."""
from metrics import analysis, quality  # noqa: F401
