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


def test_auto_dtype_on_a_cpu_without_bf16_units_is_float32():
    """A bf16 GEMM without bf16 hardware is ~50x slower than fp32, so `auto` must not pick it there."""
    import torch

    from lmx.engine.llm_engine import _resolve_dtype
    from lmx.models.layers import cpu_has_native_bf16

    cpu = torch.device("cpu")
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert _resolve_dtype("auto", torch.bfloat16, cpu) == expected
    assert _resolve_dtype("auto", None, cpu) == expected  # a quantised GGUF
    assert _resolve_dtype("bfloat16", torch.float32, cpu) == torch.bfloat16  # an explicit choice stays
    assert _resolve_dtype("auto", torch.float32, cpu) == torch.float32
