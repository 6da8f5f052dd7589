"""The test of federation.learning.datasets that starts a process (the unit tier starts none): importing the
module loads neither Keras nor TensorFlow."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO_ROOT


def test_importing_the_module_does_not_import_keras() -> None:
    code = "import sys, federation.learning.datasets; print('keras' in sys.modules or 'tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
