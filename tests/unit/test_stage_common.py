"""pipelines.common: the Ray Data executor timings the data job sets (see docs/benchmarks.md,
`ray_data_dispatch`, for what they change)."""

from __future__ import annotations

import json
import subprocess
import sys

from pipelines.common import COMPLETION_POLL_S, RESOURCE_REFRESH_S, tune_ray_data_executor

READ_TIMINGS = """
import json
from ray.data._internal.execution import streaming_executor_state as s
from ray.data._internal.execution.resource_manager import ResourceManager as r
print(json.dumps([r.GLOBAL_LIMITS_UPDATE_INTERVAL_S, s.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S]))
"""


def test_the_pinned_ray_has_both_timings_with_the_defaults_the_docs_name():
    """Both are private to Ray Data: if an upgrade renames them, tuning would silently do
    nothing, so this fails instead (a fresh interpreter, nothing tuned yet)."""
    out = subprocess.run(
        [sys.executable, "-c", READ_TIMINGS], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [1, 0.1]


def test_tuning_sets_both_timings():
    from ray.data._internal.execution import streaming_executor_state
    from ray.data._internal.execution.resource_manager import ResourceManager

    tune_ray_data_executor()
    assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == RESOURCE_REFRESH_S == 0.1
    assert streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == COMPLETION_POLL_S
    assert COMPLETION_POLL_S == 0.02
