"""hazard-cascade domain core: labels, tasks, answer parsing, metrics, fusion, schema, configs,
model code, storage, CLI.

Direct third-party imports: none in labels, tasks, answers, bundle, cascade and cli; numpy in
fusion and metrics; pyarrow in schema and storage; PIL in images; pydantic and PyYAML in config;
httpx in client; torch and PIL in vlm (transformers and pyarrow inside functions); torch in
finetune (peft inside `apply_lora`); `hazard.demo` adds tqdm and tokenizers. No module imports
Ray; `cli` imports the job modules (`ray_jobs.*`, `serve.command`, `hazard.demo.run`) by name
when one is run.
"""

__version__ = "0.1.0"
