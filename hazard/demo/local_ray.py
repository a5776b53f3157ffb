"""A local Ray head for the demo: its own auth token, ports, temp dir and process group.

Ray 2.60's `ray start --head` with `RAY_AUTH_MODE=token` refuses to start when no token exists,
and only `ray.init()` writes the default `~/.ray/auth_token`. The head here gets a fresh token in
its own run directory (`RAY_AUTH_TOKEN_PATH`), which every client it runs (`ray job submit`,
`serve deploy`) reads too, so nothing in the user's home directory is read or written.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from hazard.demo.console import JobFailed

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_token(path: Path) -> Path:
    """Write a new Ray auth token (64 hex chars, as `ray get-auth-token --generate`), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stop_process_group(
    proc: subprocess.Popen, term_wait_s: float = 15.0, kill_wait_s: float = 5.0
) -> int | None:
    """Stop `proc` and its process group: SIGTERM, then SIGKILL whatever is left after
    `term_wait_s`; returns within about term_wait_s + kill_wait_s with proc's exit code (None if
    even SIGKILL did not end it in time). A process that is not its group's leader (not started
    with `start_new_session=True`) is signalled alone, never the caller's group."""
    if proc.returncode is not None:  # reaped already
        return proc.returncode
    try:  # an exited but unreaped leader still has its group id: its group is stopped too
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return proc.wait()
    own_group = pgid == proc.pid

    def alive() -> bool:  # polling reaps the leader, so a zombie does not count as alive
        return proc.poll() is None or (own_group and _group_alive(pgid))

    for sig, wait_s in ((signal.SIGTERM, term_wait_s), (signal.SIGKILL, kill_wait_s)):
        with contextlib.suppress(ProcessLookupError):
            if own_group:
                os.killpg(pgid, sig)
            else:
                proc.send_signal(sig)
        deadline = time.monotonic() + wait_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not alive():
            break
    return proc.poll()


class LocalRay:
    """`ray start --head --block` in its own process group; stopped with TERM, then KILL.

    It never calls `ray stop`, which would stop every Ray process of the user.
    """

    def __init__(self, num_cpus: int, run_dir: Path, repo: Path, log_dir: Path):
        self.gcs_port, self.dash_port = free_port(), free_port()
        self.num_cpus, self.repo, self.log_dir = num_cpus, repo, log_dir
        # Ray's socket paths must stay under ~107 bytes: the temp dir stays short, under /tmp.
        self.temp_dir = Path("/tmp") / f"hazard-ray-{os.getpid()}"
        self.token_path = write_token(run_dir / "ray_auth_token")
        self.env = dict(
            os.environ,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_path),
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        self.env.pop("RAY_AUTH_TOKEN", None)
        self.env.pop("RAY_ADDRESS", None)
        self.address = f"http://127.0.0.1:{self.dash_port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> LocalRay:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / "ray_head.log"
        cmd = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={self.gcs_port}",
            f"--num-cpus={self.num_cpus}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dash_port}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                cwd=self.repo,
                start_new_session=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise JobFailed("ray start", self.proc.returncode, log)
            try:
                if httpx.get(f"{self.address}/api/version", timeout=2).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.__exit__()
        raise JobFailed("ray start (not up within 120 s)", -1, log)

    def __exit__(self, *exc) -> None:
        """Stop the head's whole process group: TERM, then KILL what is left after 15 s."""
        if self.proc is not None:
            stop_process_group(self.proc, term_wait_s=15, kill_wait_s=5)

    def submit_cmd(self, module: str, *args: str) -> list[str]:
        """The `ray job submit` command for `python -m module args…` on this head."""
        runtime_env = {
            "excludes": [".venv", "runs", ".git", "*.egg-info"],
            # pins every process of the job to this head, even beside other local clusters
            "env_vars": {"RAY_ADDRESS": f"127.0.0.1:{self.gcs_port}"},
        }
        return [
            str(BIN / "ray"),
            "job",
            "submit",
            f"--address={self.address}",
            "--working-dir",
            str(self.repo),
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            "python",
            "-m",
            module,
            *args,
        ]

    def serve_cmd(self, *args: str) -> list[str]:
        """A `serve` CLI command against this head."""
        return [str(BIN / "serve"), *args, f"--address={self.address}"]


def main(argv: list[str] | None = None) -> int:
    """`hazard ray-token [PATH]`: write a Ray auth token for a head you start by hand."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="hazard ray-token",
        description="Write a new Ray auth token (mode 0600) for `ray start --head` with "
        "RAY_AUTH_MODE=token, unless the file already holds one. Point RAY_AUTH_TOKEN_PATH at "
        "it for the head and every client (ray job submit, serve, ray status).",
    )
    parser.add_argument(
        "path",
        nargs="?",
        type=Path,
        default=os.environ.get("RAY_AUTH_TOKEN_PATH"),
        help="token file (default: $RAY_AUTH_TOKEN_PATH)",
    )
    args = parser.parse_args(argv)
    if args.path is None:
        parser.error("give a PATH or set RAY_AUTH_TOKEN_PATH")
    path = Path(args.path)
    if path.is_file() and path.read_text().strip():
        print(f"{path}: token already there, kept")
    else:
        write_token(path)
        print(f"{path}: new token written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
