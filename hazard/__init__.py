"""hazard-cascade domain core: labels, tasks, prompts, answers, metrics, fusion, schema.

Pure Python (plus numpy/pyarrow/PIL); imports nothing from the layers above it.
"""

__version__ = "0.1.0"
