"""Build lmx._C with CMake + Ninja against the torch that is installed in the build environment.

Environment: LMX_CUDA=auto|0|1 (CUDA kernels: when possible / never / required), TORCH_CUDA_ARCH_LIST (respected by
torch's CMake config), MAX_JOBS (parallel compile jobs), CMAKE_BUILD_TYPE (default Release).
The wheel requires exactly the torch version it was built against: C++ extensions are tied to torch's ABI.
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11
        import torch

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = os.environ.get("CMAKE_BUILD_TYPE", "Release")
        prefix_path = ";".join([torch.utils.cmake_prefix_path, pybind11.get_cmake_dir()])
        configure = [
            "cmake",
            "-S", str(ROOT),
            "-B", str(build_dir),
            "-G", "Ninja",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCMAKE_PREFIX_PATH={prefix_path}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DLMX_OUTPUT_DIR={out_dir}",
            f"-DLMX_CUDA={os.environ.get('LMX_CUDA', 'auto')}",
        ]
        subprocess.run(configure, check=True)
        build = ["cmake", "--build", str(build_dir)]
        if os.environ.get("MAX_JOBS"):
            build += ["-j", os.environ["MAX_JOBS"]]
        subprocess.run(build, check=True)


def torch_requirement() -> list[str]:
    try:
        import torch
    except ImportError:  # metadata-only invocations
        return ["torch"]
    return [f"torch=={torch.__version__.split('+')[0]}"]


# What `import lmx` and the engine, evaluations and CLI need (the server and lm-eval are extras in pyproject.toml).
RUNTIME = [
    "numpy",
    "transformers>=4.46",  # tokenizers and chat templates (local files only)
    "safetensors>=0.4",
    "gguf>=0.17",
    "tqdm>=4.60",
    "matplotlib>=3.7",
    "Levenshtein>=0.25",  # the repetition task's ratio
    "rapidfuzz>=3",
]

setup(
    ext_modules=[CMakeExtension("lmx._C")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=torch_requirement() + RUNTIME,
)
