"""docs/ARCHITECTURE.md is data: its layer table is compared with the modules' real imports, and
every row of "Where is the rule?" must name the file that defines the rule's symbol. A newcomer
who trusts the document is never sent to the wrong file."""
import ast
import re

import pytest

from conftest import ROOT

DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def _table(header: str) -> list[list[str]]:
    """The rows (cells stripped) of the markdown table whose header line starts with ``header``."""
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def layer_table() -> list[tuple[int, str]]:
    """[(layer, module name)] in the table's order."""
    return [(int(layer), module.strip("`").removesuffix(".py")) for layer, module, _ in
            _table("| layer | module |")]


def project_modules() -> set[str]:
    return {p.stem for p in ROOT.glob("*.py")}


def project_imports(module: str) -> set[str]:
    """Every project module ``module`` imports, at the top or late (inside a function)."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & project_modules() - {module}


def test_every_module_is_in_the_layer_table_once():
    table = [m for _, m in layer_table()]
    assert sorted(table) == sorted(set(table)), "a module is listed twice"
    assert set(table) == project_modules(), (
        f"not in the table: {sorted(project_modules() - set(table))}; "
        f"in the table but not a module: {sorted(set(table) - project_modules())}")


def test_the_diagram_lists_the_table_layer_by_layer():
    diagram = DOC.split("```")[1]
    by_layer: dict[int, set[str]] = {}
    current = None
    for line in diagram.splitlines():
        line = re.sub(r"\(.*?\)", "", line)               # "(+ module CLIs)" names no module
        m = re.match(r"\s*(\d)\s{2,}\S+(?:\s\S+)*?\s{2,}(.*)$", line)
        if m:
            current = int(m.group(1))
            words = m.group(2)
        elif current is not None and line.strip() and line.strip() != "|":
            words = line
        else:
            continue
        by_layer.setdefault(current, set()).update(w for w in words.split() if re.fullmatch(r"[a-z_]+", w))
    table: dict[int, set[str]] = {}
    for layer, module in layer_table():
        table.setdefault(layer, set()).add(module)
    assert by_layer == table


@pytest.mark.parametrize("module", sorted(project_modules()))
def test_imports_point_down(module):
    """A module imports modules of a lower layer, or of its own layer listed above it."""
    order = {m: (layer, i) for i, (layer, m) in enumerate(layer_table())}
    layer, row = order[module]
    wrong = sorted(f"{m} (layer {order[m][0]})" for m in project_imports(module)
                   if order[m][0] > layer or (order[m][0] == layer and order[m][1] > row))
    assert not wrong, f"{module} (layer {layer}) imports upward or a later module of its layer: {wrong}"


def defined_names(module: str) -> set[str]:
    """Module-level functions, classes and assignments, and the methods of its classes."""
    tree = ast.parse((ROOT / module).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


RULES = _table("| rule | file |")


@pytest.mark.parametrize("rule, where", [(r[0], r[1]) for r in RULES], ids=[r[0][:40] for r in RULES])
def test_each_rule_names_the_file_that_defines_it(rule, where):
    """Each row names a file and at least one of the rule's symbols in backticks, and that file
    defines every symbol the row names (a qualified one, `module.name`, in that module)."""
    files = re.findall(r"`([a-z_]+\.py)`", where)
    assert files, f"the row {rule!r} names no file"
    symbols = [s for s in re.findall(r"`([A-Za-z_][A-Za-z0-9_.]*)(?:\(\))?`", rule) if not s.endswith(".py")]
    assert symbols, f"the row {rule!r} names no symbol (a function, class or constant in backticks)"
    defined = set().union(*(defined_names(f) for f in files))
    missing = []
    for s in symbols:
        module, _, name = s.rpartition(".")
        if module in project_modules():          # `constants.AUDIT_KEY_FILE`: defined in constants.py
            found = name in defined_names(f"{module}.py")
        else:
            found = name in defined
        if not found:
            missing.append(s)
    assert not missing, f"{missing} of {rule!r} are not defined in {files}"
