"""Test configuration shared by the test modules and nbval.

Files from `../shared` are found through `shared_path` (override the folder with LLAMA_TF_SHARED). Where
a file or a reference package is missing, a test skips with the reason on a user's machine and fails
in CI (CI=true).
"""

import ast
import functools
import importlib
import json
import os
from pathlib import Path

import pytest

from llama_tf import assets

ROOT = Path(__file__).resolve().parents[1]
SHARED = assets.shared_folder()
IN_CI = os.environ.get("CI", "").lower() == "true"
LLAMA_TOKENIZER = assets.ASSETS["llama-tokenizer"].path

# Kernels started by nbval read this IPython profile, which keeps C++ log lines out of cell outputs.
os.environ.setdefault("IPYTHONDIR", str(ROOT / "tests" / "ipython"))
# Tests never download (llama_tf.assets), and run on the shipped default model whatever the shell has set.
os.environ[assets.OFFLINE_ENV] = "1"
os.environ.pop("LLAMA_TF_WEIGHTS", None)


def missing(reason: str):
    "Skip with `reason`, or fail in CI where every input must be present."
    if IN_CI:
        pytest.fail(f"{reason} (required when CI=true)", pytrace=False)
    pytest.skip(reason)


def how_to_get(names) -> str:
    "How a user gets the assets `names`: tests never download, so the user runs the download once."
    fetches = " and ".join(f"llama_tf.assets.fetch({name!r})" for name in names)
    return f"run {fetches} once to download and cache it, or set LLAMA_TF_SHARED to a folder that has it"


def shared_path(relative: str) -> Path:
    path = SHARED / relative
    if not path.is_file():
        names = [name for name, asset in assets.ASSETS.items() if asset.path == relative]
        found = assets.find(names[0]) if names else None   # a copy in the download cache or a package
        if found is not None:
            return found
        missing(f"{path} not found; " + (how_to_get(names) if names else "set LLAMA_TF_SHARED to the shared folder"))
    return path


def require(module: str):
    "Import a reference package (transformers, torch, sentencepiece), or skip / fail."
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"reference package {module!r} is not installed (pip install -e '.[dev]')")


@functools.cache
def fetched_assets(notebook: Path) -> frozenset[str]:
    "The assets a notebook's code fetches: calls `….assets.fetch(\"name\")` (prose and strings do not count)."
    names = set()
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "code":
            for node in ast.walk(ast.parse("".join(cell["source"]))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "fetch" \
                        and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "assets":
                    names.add(node.args[0].value)
    return frozenset(names)


def pytest_collection_modifyitems(config, items):
    """A notebook that fetches an asset skips as a whole where the file is not on this machine: tests never
    download it. In CI a missing file fails the first test that reads it."""
    if IN_CI:
        return
    for item in items:
        path = Path(str(item.fspath))
        if path.suffix == ".ipynb" and (absent := sorted(n for n in fetched_assets(path) if assets.find(n) is None)):
            item.add_marker(pytest.mark.skip(reason=f"the notebook reads {', '.join(absent)}: {how_to_get(absent)}"))


@pytest.fixture(scope="session")
def llama_tokenizer_path() -> Path:
    return shared_path(LLAMA_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_tokenizer_proto() -> bytes:
    "A small SentencePiece BPE model trained here, LLaMA-style (byte fallback, <unk>/<s>/</s> = 0/1/2)."
    from reference import train_tiny_tokenizer

    return train_tiny_tokenizer()


# Meta's Llama 3 tokenizer, as the `llama-models` package ships it (a test dependency; never copied here).
LLAMA3_TOKENIZER_SHA256 = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"


@pytest.fixture(scope="session")
def llama3_tokenizer_path() -> Path:
    import hashlib

    llama_models = require("llama_models")
    path = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    if hashlib.sha256(path.read_bytes()).hexdigest() != LLAMA3_TOKENIZER_SHA256:
        pytest.fail(f"{path} is not the Llama 3 tokenizer.model these tests were written for (sha256 differs)")
    return path


@pytest.fixture(scope="session")
def meta_llama3_tokenizer(llama3_tokenizer_path):
    "Meta's reference tokenizer (`llama_models.llama3.tokenizer.Tokenizer`) on that file."
    return require("llama_models.llama3.tokenizer").Tokenizer(llama3_tokenizer_path)


@pytest.fixture(scope="session")
def llama3_tokenizer_json(llama3_tokenizer_path, tmp_path_factory) -> Path:
    "The same vocabulary as a Hugging Face tokenizer.json, converted by transformers as the Hub's files were."
    convert = require("transformers.convert_slow_tokenizer")
    from llama_tf.tokenizers.tiktoken_tokenizer import LLAMA3_SPECIAL_TOKENS

    path = tmp_path_factory.mktemp("llama3-json") / "tokenizer.json"
    convert.TikTokenConverter(vocab_file=str(llama3_tokenizer_path),
                              extra_special_tokens=LLAMA3_SPECIAL_TOKENS).converted().save(str(path))
    return path


@pytest.fixture(autouse=True)
def inference_without_autograd(request):
    """On Keras' PyTorch backend, tests run as inference code runs: without autograd (`torch.no_grad`),
    so that outputs convert to NumPy; tests marked `training` keep it. (The other backends record
    nothing unless asked.)"""
    from llama_tf.backend import inference

    if request.node.get_closest_marker("training"):
        yield
        return
    with inference():
        yield
