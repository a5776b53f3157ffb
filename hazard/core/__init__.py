"""The domain core: labels, task specs and answers, fusion and cascade maths, metrics,
the sample schema and `StrictModel`. Pure Python, numpy, pyarrow and pydantic: no Ray, torch or
transformers."""
