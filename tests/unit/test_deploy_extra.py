"""The Kubernetes client is the `deploy` extra: everything but `hazard deploy` runs without it,
and `hazard deploy` without it says which extra to install instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Run in a fresh interpreter where importing `kubernetes` fails as if it were not installed.
WITHOUT_KUBERNETES = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoKubernetes(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "kubernetes":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoKubernetes())
    """
)


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_KUBERNETES + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_product_outside_deploy_imports_without_kubernetes():
    done = run(
        """
        import hazard.cli, hazard.client, hazard.reports, hazard.demo.run
        import pipelines.prepare, ray_jobs.train, ray_jobs.calibrate, ray_jobs.score_dataset
        import serve.app, serve.command
        print("imported")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"


def test_hazard_deploy_without_the_extra_names_it():
    done = run(
        """
        from hazard.cli import main
        sys.exit(main(["deploy", "--clusters", "clusters.yaml"]))
        """
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "pip install 'hazard-cascade[deploy]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_blocker_is_what_stops_it():
    """Without the blocker the same import works: the test above fails for the extra only."""
    done = subprocess.run(
        [sys.executable, "-c", "import hazard.deploy.command; print('ok')"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
