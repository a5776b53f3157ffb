"""Helpers the tests share, one module per subject, each imported one way:
`from tests.helpers.<subject> import ...`."""
