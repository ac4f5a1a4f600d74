"""The API imports the workflow's contract, never its code: starting the API loads no
activity, model, media or provider-job library (each is a worker's business)."""

from __future__ import annotations

import subprocess
import sys

# Libraries only workers (and the local model server) may load.
WORKER_ONLY = {
    "fal_client",  # provider jobs: the model activities and the housekeeping sweep
    "ffmpeg",  # ffmpeg-python: the transcode
    "imageio_ffmpeg",
    "cv2",  # the local models
    "onnxruntime",
    "temporalio.worker",
}
# The workflow's own code and the activities; activities.model_errors is pure and is
# part of the contract (the activities' error types).
WORKER_MODULES = ("activities.", "workflows.bitbuddy", "infra.modelserver", "infra.worker")


def _modules_loaded_by(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(done.stdout.split())


def test_the_api_loads_no_worker_library() -> None:
    loaded = _modules_loaded_by("import api.app; api.app.create_app")
    assert not WORKER_ONLY & loaded, sorted(WORKER_ONLY & loaded)
    inside = sorted(
        m for m in loaded if m.startswith(WORKER_MODULES) and m not in ("activities.model_errors",)
    )
    assert inside == [], inside
    assert "workflows.contract" in loaded  # what it uses instead
