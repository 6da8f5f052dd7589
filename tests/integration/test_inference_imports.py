"""The inference path imports no TensorFlow: the serve and predict modules, and the runtime fallback order
LiteRT, then tflite-runtime, then tensorflow.lite (checked in fresh interpreters)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.deploy_support import REPO_ROOT, tiny_tflite

BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} blocked by the test")
sys.meta_path.insert(0, Block())
"""


def run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_serve_and_predict_import_neither_tensorflow_nor_keras() -> None:
    result = run("import json, sys\n"
                 "import edge_client.__main__, edge_client.serve, edge_client.predict, federation.protocol.model_delivery\n"
                 "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
                 "{'tensorflow', 'keras', 'tf_keras', 'rich', 'federation.learning.datasets'})))")
    assert result == []


def test_runtime_order_litert_then_tflite_runtime_then_tensorflow(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(tiny_tflite(1))
    probe = ("import json, sys\nfrom federation.inference.runtime import TFLiteClassifier\n"
             f"c = TFLiteClassifier({str(model)!r})\n"
             "print(json.dumps([c.runtime, 'tensorflow' in sys.modules]))")
    assert run(probe) == ["ai-edge-litert", False]
    # without LiteRT (and no tflite-runtime installed here) it falls back to TensorFlow's interpreter
    assert run(BLOCK.format(blocked={"ai_edge_litert"}) + probe) == ["tensorflow", True]
    out = subprocess.run([sys.executable, "-c", BLOCK.format(blocked={"ai_edge_litert", "tensorflow"}) + probe],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode != 0 and "no TFLite runtime found; install ai-edge-litert" in out.stderr
