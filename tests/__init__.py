"""Test package. Shared helpers live in `tests/helpers/`, one module per subject, imported
as `from tests.helpers.<subject> import ...`."""
