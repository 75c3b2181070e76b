"""Test configuration shared by the test modules and nbval.

Files from `../shared` are found through `shared_path` (override the folder with LLAMA_TF_SHARED). Where
a file or a reference package is missing, a test skips with the reason on a user's machine and fails
in CI (CI=true).
"""

import importlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLAMA_TF_SHARED", ROOT.parent / "shared"))
IN_CI = os.environ.get("CI", "").lower() == "true"
LLAMA_TOKENIZER = "tokenizers/llama/tokenizer.model"

# Kernels started by nbval read this IPython profile, which keeps C++ log lines out of cell outputs.
os.environ.setdefault("IPYTHONDIR", str(ROOT / "tests" / "ipython"))


def missing(reason: str):
    "Skip with `reason`, or fail in CI where every input must be present."
    if IN_CI:
        pytest.fail(f"{reason} (required when CI=true)", pytrace=False)
    pytest.skip(reason)


def shared_path(relative: str) -> Path:
    path = SHARED / relative
    if not path.is_file():
        missing(f"{path} not found; set LLAMA_TF_SHARED to the shared folder")
    return path


def require(module: str):
    "Import a reference package (transformers, torch, sentencepiece), or skip / fail."
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"reference package {module!r} is not installed (pip install -e '.[dev]')")


def pytest_collection_modifyitems(config, items):
    "Notebooks that read ../shared skip as a whole where it is absent (never in CI)."
    if (SHARED / LLAMA_TOKENIZER).is_file() or IN_CI:
        return
    skip = pytest.mark.skip(reason=f"needs {SHARED / LLAMA_TOKENIZER}; set LLAMA_TF_SHARED")
    for item in items:
        path = Path(str(item.fspath))
        if path.suffix == ".ipynb" and "LLAMA_TF_SHARED" in path.read_text():
            item.add_marker(skip)


@pytest.fixture(scope="session")
def llama_tokenizer_path() -> Path:
    return shared_path(LLAMA_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_tokenizer_proto() -> bytes:
    "A small SentencePiece BPE model trained here, LLaMA-style (byte fallback, <unk>/<s>/</s> = 0/1/2)."
    from reference import train_tiny_tokenizer

    return train_tiny_tokenizer()
