"""Test package: makes shared helpers importable as `tests.<module>` (e.g. tests.moto_s3)."""
