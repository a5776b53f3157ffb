"""The embedded default that `make demo` and the tests run on, kept apart from the domain core.

- `synthetic`: corridor scenes drawn by rule for the five risk labels, and a folder of them;
- `tiny_qwen`: a tiny Qwen2.5-VL built, pre-trained on those scenes' captions and cached once;
- `local_ray`: a local Ray head with its own auth token, ports and process group;
- `console`: step headers, progress bars and logs in files;
- `run`: the end-to-end demo (`hazard demo`).
"""
