"""The dependency rule between xlsr's packages, checked on every import in the source tree.

Every ``import``/``from ... import`` statement counts, including the lazy ones inside functions.
The rule (docs/architecture.md):

- the library ``xlsr`` imports neither ``sharding`` nor ``launchers``;
- ``sharding`` may import the library, never ``launchers``;
- ``launchers`` may import the library and ``sharding``;
- ``sharding`` imports nothing from ``xlsr.engine`` (nor ``xlsr.evaluation``);
- inside the library: ``xlsr.model``, ``xlsr.objectives``, ``xlsr.weights`` and ``xlsr.data``
  import nothing from ``xlsr.engine`` or ``xlsr.evaluation`` (nor ``xlsr.objectives`` from
  ``xlsr.weights``); ``xlsr.evaluation`` nothing from ``xlsr.engine`` (the loop
  calls it, never the reverse); ``xlsr.model`` nothing from ``xlsr.data`` or ``xlsr.objectives``
  (an objective builds on the model, not the other way round);
- command-line modules (``*.cli``, ``*.__main__``, ``xlsr.demo``) are leaves: only other
  command-line modules import them;
- there is no import cycle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("xlsr", "sharding", "launchers")
ENTRY_MODULES = {"xlsr.demo"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
    }


def imported_names(path: Path, module: str) -> set[str]:
    """Every module named by an import statement anywhere in the file (relative ones resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(path, module):
            while name and name not in modules:  # `xlsr.config.load_config` -> `xlsr.config`
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def is_entry(module: str) -> bool:
    last = module.rpartition(".")[2]
    return last in ("cli", "__main__") or module in ENTRY_MODULES


def layer(module: str) -> str:
    return module.partition(".")[0]


# (lower, upper): no module of ``lower`` imports one of ``upper``.
LOWER_NEVER_IMPORTS_UPPER = (
    *((lower, upper) for lower in ("xlsr.model", "xlsr.objectives", "xlsr.weights", "xlsr.data", "sharding")
      for upper in ("xlsr.engine", "xlsr.evaluation")),
    ("xlsr.objectives", "xlsr.weights"),
    ("xlsr.evaluation", "xlsr.engine"),
    ("xlsr.model", "xlsr.data"),
    ("xlsr.model", "xlsr.objectives"),
)  # fmt: skip


def forbidden(source: str, target: str) -> str | None:
    """Why ``source`` may not import ``target``, or None if it may."""
    if is_entry(target) and not is_entry(source):
        return "command-line modules are leaves"
    if is_entry(source):
        return None
    allowed = {"xlsr": {"xlsr"}, "sharding": {"xlsr", "sharding"}, "launchers": set(PACKAGES)}
    if layer(target) not in allowed[layer(source)]:
        return f"{layer(source)} may not import {layer(target)}"
    for lower, upper in LOWER_NEVER_IMPORTS_UPPER:
        if (source == lower or source.startswith(lower + ".")) and (
            target == upper or target.startswith(upper + ".")
        ):
            return f"{lower} may not import {upper}"
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(project_modules())


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    source = tmp_path / "pkg" / "mod.py"
    source.parent.mkdir()
    source.write_text("def f():\n    from . import other\n    import xlsr.engine.trainer\n")
    names = imported_names(source, "pkg.mod")
    assert {"pkg.other", "xlsr.engine.trainer"} <= names


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_cycle_detection_finds_a_planted_cycle(graph):
    planted = {module: set(targets) for module, targets in graph.items()}
    planted["xlsr.config"].add("xlsr.engine.trainer")  # the trainer imports config
    assert any("xlsr.config" in component for component in cycles(planted))


def test_dependency_direction(graph):
    violations = [
        f"{source} -> {target}: {why}"
        for source, targets in sorted(graph.items())
        for target in sorted(targets)
        if (why := forbidden(source, target))
    ]
    assert violations == []


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("xlsr.engine.trainer", "launchers.local"),
        ("xlsr.data.loader", "sharding.writer"),
        ("sharding.writer", "launchers.local"),
        ("launchers.local", "xlsr.cli"),
        ("xlsr.model.wav2vec2", "xlsr.engine.distributed"),
        ("xlsr.evaluation.validate", "xlsr.engine.backends"),
        ("xlsr.evaluation.plot", "xlsr.engine.reporting"),
        ("xlsr.objectives.wav2vec2", "xlsr.engine.metrics"),
        ("xlsr.objectives.best_rq", "xlsr.evaluation.probe"),
        ("xlsr.model.encoder", "xlsr.objectives.base"),
        ("sharding.api", "xlsr.engine.reporting"),
        ("xlsr.weights.training_checkpoint", "xlsr.engine.checkpoint"),
    ],
)
def test_the_rule_rejects_forbidden_directions(source, target):
    assert forbidden(source, target) is not None


def test_every_data_source_satisfies_the_protocol(demo_index, tmp_path):
    """The trainer reads only `DataSource` members: the loader, the engine tests' and the GPU
    check's fixed sources implement all of them."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from engine_worker import FixedBatches
    from gpu_check_parts import RepeatedBatch

    from xlsr.config import DataConfig
    from xlsr.data.loader import DataStream
    from xlsr.data.source import DataSource

    batches = tmp_path / "batches.pt"
    torch.save([{"source": torch.zeros(1, 16_000), "padding_mask": None, "num_samples": 16_000}], batches)
    stream = DataStream(DataConfig(train=[str(demo_index)], num_workers=0), seed=0)
    fixed = FixedBatches(str(batches), 0, 1, 1, set(), None)
    source = RepeatedBatch(1, 16_000, pin=False)
    assert all(isinstance(s, DataSource) for s in (stream, fixed, source))
    next(source), next(source)
    state = source.state_dict()
    restored = RepeatedBatch(1, 16_000, pin=False)
    restored.load_state_dict(state)
    assert restored.state_dict() == state == {"consumed": 2}
