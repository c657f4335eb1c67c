"""Import check of the LMX_CUDA=1 extension with no GPU (`make cuda-link`), run by the CUDA torch's Python.

Usage: python link_check.py <dir holding the built _C module>
Loads the module (which registers torch.ops.lmx.*), then checks: the build says cuda=True, every op has a CUDA
kernel registered with the dispatcher, the CPU ops still work, and a CUDA tensor raises a clear error when no GPU
(or driver) is present.
"""

import sys

import torch

sys.path.insert(0, sys.argv[1])
import _C  # noqa: E402  (the freshly built lmx._C, imported under its file name)

OPS = ("rotary_embedding", "rotary_embedding_and_cache", "reshape_and_cache", "paged_attention")

info = dict(_C.build_info())
assert info["cuda"] is True, f"build_info()['cuda'] should be True in an LMX_CUDA=1 build, got {info}"
assert torch.version.cuda, "this check must run under the CUDA build of torch"
for op in OPS:
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lmx::{op}", key), f"lmx::{op} has no {key} kernel"

# The CPU side of the same module still computes.
k = torch.randn(3, 1, 64)
kc = torch.full((1, 16, 1, 64), float("nan"))
vc = kc.clone()
torch.ops.lmx.reshape_and_cache(k, k, kc, vc, torch.tensor([0, -1, 5]))
assert torch.equal(kc[0, 5, 0], k[2, 0]) and torch.isnan(kc[0, 1]).all()

if torch.cuda.is_available():
    print(f"cuda-link: {info} imported; a GPU is present (run pytest -m cuda tests/cuda for the kernels)")
else:
    try:
        torch.zeros(1, device="cuda")
    except (RuntimeError, AssertionError) as e:
        msg = str(e).strip().splitlines()[0]
        print(
            f"cuda-link: _C imported (torch {torch.__version__}, build_info {info}); no GPU here, a CUDA tensor "
            f"raises: {msg}"
        )
    else:
        raise SystemExit("cuda-link: torch.cuda.is_available() is False but a CUDA tensor could be created")
