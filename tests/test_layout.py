"""The package layout rules (README, Development): no import cycles, no import that runs back up the layers, and no
library module imports the test helpers (``segcompass.testing``) or the command line."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "segcompass"

# bottom (0) to top; a module may import its own layer or below
LAYERS = {
    "utils": 0, "answer_format": 0, "sam_frame": 0, "prediction": 0, "image_utils": 0,
    "sae": 1, "convert": 1, "data": 1, "metrics": 1,
    "modules": 2,
    "configuration_segcompass": 3, "presets": 3, "backbone_processing": 3, "modeling_outputs": 3,
    "modeling_components": 3,
    "modeling_inference": 3,
    "modeling_segcompass": 4, "processing_segcompass": 4, "processing_inputs": 4, "processing_outputs": 4,
    "pipelines": 5, "training": 5, "interpret": 5, "evaluation": 5, "demo": 5, "visualize": 5, "from_scratch": 5,
    "assembly": 5,
    "recipes": 6, "app": 6,
    "commands": 7, "cli": 7,
    "testing": 8, "testing_processor": 8,
    "_registration": 6, "__init__": 9,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every segcompass module ``path`` imports, at module level or inside functions."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module, *(f"{module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("segcompass")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for target in imports(path):
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS["__init__" if len(parts) == 1 else parts[1]]


def is_package_edge(a: str, b: str) -> bool:
    """A package ``__init__`` re-exporting its own submodules (or a submodule importing its package's helpers)."""
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_every_module_has_a_layer():
    assert sorted({name.split(".")[1] for name in graph() if "." in name} - set(LAYERS)) == []


def test_no_import_runs_back_up_the_layers():
    upward = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets
                    if not is_package_edge(a, b) and layer(b) > layer(a))
    assert upward == []


def test_no_import_cycles():
    edges = {a: {b for b in targets if not is_package_edge(a, b)} for a, targets in graph().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_library_never_imports_the_test_helpers():
    offenders = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets
                       if b.split(".")[1:2] in (["testing"], ["testing_processor"])
                       and a.split(".")[1:2] not in (["testing"], ["testing_processor"]))
    assert offenders == []
