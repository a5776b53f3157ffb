"""The embedded default that `make demo` and the tests run on, kept apart from the domain core.

- `synthetic`: corridor scenes drawn by rule for the five risk labels, and a labelled folder of them;
- `tiny_qwen`: a tiny Qwen2.5-VL built, pre-trained on those scenes' captions and cached once.
"""
