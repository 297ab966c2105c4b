"""dbpromote: Django migrations promoted through environments as Prefect flows."""

__version__ = "0.1.0"
