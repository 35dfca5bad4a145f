"""The package's layout (the structure map in CONTRIBUTING.md): folders by role, imports only downwards, no import
circles, and nothing below the faces importing the package facade. Read from every module's own imports (lazy ones
inside functions included), so a new import that breaks the rule fails here, not in a user's kernel."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "difflens_widgets"

# role → level: a module may import its own role or a lower level, never a higher one or a sibling role
# The studies (the scripts that made and measure the toy models) sit above everything: they use the library, and
# nothing in it, the faces included, depends on them.
LEVELS = {
    "adapters": 0,
    "toy": 0,
    "core": 1,
    "analyses": 2,
    "denoiser": 2,
    "sweeps": 2,
    "widgets": 3,
    "faces": 4,
    "studies": 5,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def role(module: str) -> str:
    if module in ("", "cli", "magics", "testing"):
        return "faces"  # the facade, the command line, the magics, the test helpers
    return module.split(".")[0]


def imports_of(path: Path) -> set[str]:
    """Package modules ``path`` imports (names relative to the package; "" is the facade itself)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "difflens_widgets":
                target = node.module.partition(".")[2]
            else:
                continue
            # `from X import submodule` imports the submodule (X is only its parent); `from X import name`, X
            submodules = {f"{target}.{a.name}".strip(".") for a in node.names} - {target}
            submodules = {name for name in submodules if _exists(name)}
            found.update(submodules or {target})
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "difflens_widgets":
                    found.add(alias.name.partition(".")[2])
    found.discard(module)
    return found


def _exists(name: str) -> bool:
    path = PACKAGE.joinpath(*name.split(".")) if name else PACKAGE
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_has_a_role():
    assert {role(m) for m in GRAPH} <= set(LEVELS), {m: role(m) for m in GRAPH if role(m) not in LEVELS}


def violation(module: str, target: str) -> str | None:
    """Why ``module`` may not import ``target``, or None when it may."""
    mine, theirs = role(module), role(target)
    if target == "":
        if LEVELS[mine] < LEVELS["faces"]:
            return f"{module} imports the package facade; import the module that defines the name"
    elif theirs != mine and LEVELS[theirs] >= LEVELS[mine]:
        return f"{module} ({mine}) imports {target} ({theirs}): upward or sideways"
    return None


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_downwards(module):
    assert [v for target in GRAPH[module] if (v := violation(module, target))] == []


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("core.models", "studies.train"),  # the engine finds the embedded models by path, not through a script
        ("toy.world", "studies.pool"),  # toy/ holds what ships: the world never reaches for its training scripts
        ("cli", "studies.report"),  # not even a face: `difflens` works without the studies
        ("sweeps.runner", "studies.report"),
        ("toy.annotate", "core.engine"),  # toy sits at the bottom beside the adapters
    ],
)
def test_upward_imports_are_refused(module, target):
    assert violation(module, target) is not None


def test_the_studies_may_use_everything():
    assert all(violation("studies.report", target) is None for target in ("", "sweeps.store", "toy.annotate", "cli"))


def test_toy_holds_only_what_ships():
    scripts = [m for m in GRAPH if m.startswith("toy.") and any(role(t) != "toy" for t in GRAPH[m])]
    assert scripts == []
    assert not (PACKAGE / "toy" / "studies").exists()


def test_no_import_circles():
    """Strongly connected components of the module graph (Tarjan): every one a single module."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            target = target if target in GRAPH else None
            if target is None:
                continue
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
                circles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert circles == []


def test_the_map_finds_what_the_old_layout_had_wrong():
    """The checker itself: it sees a lazy import inside a function, a relative import two levels up, and the
    facade; so an empty finding above means something."""
    assert "toy.annotate" in GRAPH["studies.train"]  # `from ..toy.annotate import judge` inside a function
    assert "core.engine" in GRAPH["analyses.panels"]
    assert "" in GRAPH["cli"]  # `import difflens_widgets as dl`: allowed in a face
