"""The naive baseline of bench_serve_load: how a fine-tuned VLM is usually put behind HTTP.

One FastAPI process holding one model; each request decodes its image, calls `model.generate`
for up to 150 new tokens and reads the risk label out of the text (`hazard.core.answers`, the most
forgiving parser this project has). A sync endpoint, so FastAPI runs requests in its thread pool
on the one model, as the published attempts did. No batching, no admission, no auth.

    python -m bench.naive_generate_server --model runs/demo/stage1_base/model --port 8300 \
        [--min-new-tokens 150]
"""

from __future__ import annotations

import argparse
import base64
import io

import torch
import uvicorn
from fastapi import FastAPI
from PIL import Image
from pydantic import BaseModel

from hazard.core.answers import parse_risk_level
from hazard.infra.bundle import open_bundle
from hazard.model.vlm import load_model, load_processor, prompt_text

MAX_NEW_TOKENS = 150


class Item(BaseModel):
    id: str | None = None
    image: str


def make_app(model_uri: str, min_new_tokens: int = 0) -> FastAPI:
    bundle = open_bundle(model_uri)
    processor = load_processor(bundle.path, bundle.meta.max_pixels, bundle.meta.min_pixels)
    model = load_model(bundle.path).eval()
    text = prompt_text(processor, bundle.meta.prompt, 1)
    app = FastAPI()

    @app.get("/readyz")  # the model is loaded before the server starts
    def readyz() -> dict:
        return {"status": "ok"}

    @app.post("/v1/score")
    def score(item: Item) -> dict:
        image = Image.open(io.BytesIO(base64.b64decode(item.image))).convert("RGB")
        inputs = processor(text=[text], images=[image], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=MAX_NEW_TOKENS,
                min_new_tokens=min_new_tokens,
                do_sample=False,
            )
        answer = processor.batch_decode(
            out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )[0]
        return {"id": item.id, "risk_level": parse_risk_level(answer), "text": answer}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a model bundle (local folder or URI)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8300)
    p.add_argument(
        "--min-new-tokens",
        type=int,
        default=0,
        help="generate at least this many tokens (150: the length of a real fine-tuned VLM's "
        "rationale; the tiny demo model stops after the label)",
    )
    args = p.parse_args()
    app = make_app(args.model, args.min_new_tokens)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
