"""The public API surface: cheap ``import lmx``, lazy exports, the engine on the kernels."""

from __future__ import annotations

import subprocess
import sys


def test_import_lmx_is_cheap_and_lazy():
    code = (
        "import sys, lmx; assert 'torch' not in sys.modules and 'lmx.ops' not in sys.modules, sorted(sys.modules)\n"
        "from lmx import EngineConfig, GenerationConfig\n"
        "assert 'torch' not in sys.modules\n"
        "assert callable(lmx.pipeline)\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_models_call_the_kernels_not_the_reference():
    import lmx.ops
    from lmx.models import layers

    assert layers.ops is lmx.ops
