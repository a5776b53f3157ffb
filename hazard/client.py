"""Score image files against a running hazard-cascade endpoint.

hazard score img1.png img2.jpg --url http://127.0.0.1:8000   (API key from $HAZARD_API_KEY)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import httpx


def post_image(client: httpx.Client, url: str, path: Path, api_key: str | None) -> httpx.Response:
    """POST one image as multipart to `<url>/v1/score`; the response as it came."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with path.open("rb") as f:
        return client.post(
            f"{url.rstrip('/')}/v1/score",
            headers=headers,
            files={"file": (path.name, f, "application/octet-stream")},
        )


def score_file(client: httpx.Client, url: str, path: Path, api_key: str | None) -> dict:
    """POST one image as multipart; returns the JSON answer (or raises with the error body)."""
    resp = post_image(client, url, path, api_key)
    if resp.status_code != 200:
        raise RuntimeError(f"{path}: HTTP {resp.status_code}: {resp.text}")
    return resp.json()


def wait_ready(client: httpx.Client, url: str, timeout_s: float) -> bool:
    """Poll GET /readyz until it answers 200 (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.get(f"{url.rstrip('/')}/readyz", timeout=10).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hazard score", description="Score images against a hazard-cascade endpoint."
    )
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--api-key-env",
        default="HAZARD_API_KEY",
        help="env var holding the API key (default HAZARD_API_KEY)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for GET /readyz to answer 200 (default 0: don't wait)",
    )
    args = parser.parse_args(argv)
    api_key = os.environ.get(args.api_key_env) or None
    failed = 0
    with httpx.Client(timeout=args.timeout) as client:
        if args.wait > 0 and not wait_ready(client, args.url, args.wait):
            print(f"error: {args.url}/readyz not ready after {args.wait:.0f}s", file=sys.stderr)
            return 1
        for path in args.images:
            try:
                print(json.dumps(score_file(client, args.url, path, api_key)))
            except (OSError, RuntimeError, httpx.HTTPError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
