"""tests/cuda: emulated CUDA kernels (test_emu_*.py, run everywhere) and real-GPU tests (marker `cuda`).

tests/conftest.py skips items whose *keywords* contain "cuda", which every item under this directory has (the
directory's name is a keyword). Only tests with the `cuda` marker need a GPU: undo that one skip for the others.
"""

import pytest

_GPU_SKIP_REASON = "needs an NVIDIA GPU"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            continue
        item.own_markers[:] = [
            m for m in item.own_markers if not (m.name == "skip" and m.kwargs.get("reason") == _GPU_SKIP_REASON)
        ]
