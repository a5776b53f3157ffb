"""The domain core: labels, task specs and answers, fusion and cascade maths, metrics,
the sample schema. Pure Python, numpy and pyarrow: no Ray, torch or transformers."""
