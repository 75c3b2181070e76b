"""The package's shape (shared/LAYOUT.md): imports run one way, and the file formats need no Keras.

The import graph is read from the source (every `import` statement, inside functions too), so an import
that only runs on some path counts as much as one at the top of a module."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "llama_tf"
# The one circle LAYOUT.md allows: `Tokenizer(path)` picks a kind, and the kinds subclass `Tokenizer`.
FACTORY_PACKAGE = "llama_tf.tokenizers"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    "Module -> the llama_tf modules it imports (a submodule's import runs its packages' `__init__` too)."
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from llama_tf import kernels` imports a module; `from llama_tf.x import f` imports llama_tf.x
                candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                              for alias in node.names]
            else:
                continue
            for target in candidates:
                while target and target not in modules:      # `import llama_tf.a.b` where b is a name
                    target = target.rpartition(".")[0]
                parts = target.split(".")
                for i in range(2, len(parts) + 1):           # the packages on the way (not llama_tf's own,
                    prefix = ".".join(parts[:i])             # nor one the importer sits in: that one runs first)
                    if prefix == target or not name.startswith(prefix + "."):
                        targets.add(prefix)
        graph[name] = targets - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    "The strongly connected components of more than one module (Tarjan's algorithm)."
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_imports_it_should():
    "The reader of the graph itself: it finds known edges of each kind (top-level, relative, inside a function)."
    graph = import_graph()
    assert "llama_tf.config" in graph["llama_tf.formats.gguf"]                  # from llama_tf.config import ...
    assert "llama_tf.layers.projection" in graph["llama_tf.layers.attention"]                  # from .projection import ... (nbdev)
    assert "llama_tf.kernels" in graph["llama_tf.layers.projection"]                    # from . import kernels
    assert "llama_tf.formats.gguf" in graph["llama_tf.convert"]                  # inside a function
    assert "llama_tf.formats" in graph["llama_tf.convert"]                       # a package's __init__ runs too
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_circle_outside_the_tokenizer_factory():
    found = circles(import_graph())
    outside = [sorted(c) for c in found if not all(m.startswith(FACTORY_PACKAGE + ".") for m in c)]
    assert not outside, f"import circles: {outside}"


def test_the_bottom_floors_import_nothing_above_them():
    """Configuration, the model's structure, RoPE maths, the Q8_0 and 4- to 6-bit block codecs and Llama 3's
    vocabulary constants are leaves; formats import only leaves."""
    graph = import_graph()
    leaves = {"llama_tf.config", "llama_tf.rope", "llama_tf.q8_0", "llama_tf.ggml_blocks", "llama_tf.llama3_vocabulary",
              "llama_tf.chat", "llama_tf.structure"}
    for leaf in leaves:
        assert graph[leaf] == set(), f"{leaf} imports {graph[leaf]}"
    for name, targets in graph.items():
        if name.startswith("llama_tf.formats"):
            above = {t for t in targets if t not in leaves and not t.startswith("llama_tf.formats")}
            assert not above, f"{name} imports {above}"


def test_formats_and_convert_run_without_keras(tmp_path):
    """With Keras, TensorFlow, JAX and PyTorch made unimportable, the formats read the shipped model and
    `convert` writes it as GGUF and as Hugging Face safetensors (the tokenizer through the sentencepiece library)."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("keras", "tensorflow", "tensorflow_text", "jax", "torch"):
                    raise ImportError(f"{{name}} is made unimportable by this test")

        sys.meta_path.insert(0, Refuse())
        import llama_tf.formats
        from llama_tf.convert import convert

        checkpoint = llama_tf.formats.read_checkpoint({str(ROOT / "weights" / "shakespeare")!r})
        print(checkpoint.format, checkpoint.config.n_layers, checkpoint.tensors["norm.weight"].load().shape)
        convert({str(ROOT / "weights" / "shakespeare")!r}, {str(tmp_path / "model.gguf")!r})
        convert({str(ROOT / "weights" / "shakespeare")!r}, {str(tmp_path / "hf")!r}, dtype="bfloat16")
        print(llama_tf.formats.read_checkpoint({str(tmp_path / "model.gguf")!r}).config.n_layers)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "tensorflow", "jax", "torch")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:4] == ["hf 6 (384,)", "6", "[]", ""]
    assert (tmp_path / "hf" / "tokenizer.model").is_file()
