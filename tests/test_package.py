"""What importing the library does to the process: nothing; the command sets what it owns."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

PROBE = """
import json, os, sys
before = dict(os.environ)
import frcnn
loaded = "torch" in sys.modules
frcnn.FasterRCNN, frcnn.assign_anchor_targets
print(json.dumps({"unchanged": dict(os.environ) == before, "torch_on_import": loaded,
                  "policy_after_model": os.environ.get("OMP_WAIT_POLICY")}))
"""


def _probe(code: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    # torch._dynamo, which torchvision imports, sets TORCHINDUCTOR_CACHE_DIR when it is unset:
    # torch's doing, not frcnn's. Set it here, so that the probe sees frcnn alone whether or not
    # an earlier test in this process already had torch set it.
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "frcnn_probe_inductor"))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_import_frcnn_leaves_the_environment_unchanged() -> None:
    found = _probe(PROBE)
    assert found == {"unchanged": True, "torch_on_import": False, "policy_after_model": None}


def test_the_command_module_sets_passive_waits_before_torch_loads() -> None:
    found = _probe("import json, os, sys; import frcnn.cli; "
                   "print(json.dumps([os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules]))")
    assert found == ["PASSIVE", True]
