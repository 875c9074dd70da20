"""The package's floors, read from the source with ast (nothing is imported): each module imports
only modules of lower floors or of its own package, no import cycle, no module over 500 lines."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'cnn_jax')

# Lowest first. Packages on one floor do not import each other.
FLOORS = {
  'cnn_jax.core': 0,
  'cnn_jax.nn': 1,
  'cnn_jax.ops': 1,
  'cnn_jax.data': 1,
  'cnn_jax.models': 2,
  'cnn_jax.weights': 3,
  'cnn_jax.tasks': 3,
  'cnn_jax.train': 4,
  'cnn_jax.inference': 5,
  'cnn_jax.recipes': 5,
  'cnn_jax.cli': 6,
}
MAX_LINES = 500


def _modules() -> dict[str, str]:
  """{'cnn_jax.train.loop': path, 'cnn_jax.train': .../__init__.py, ...}"""
  found = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        found[module.removesuffix('.__init__')] = path
  return found


def _imports(module: str, path: str, known: dict[str, str]) -> set[str]:
  """The package modules `module` imports, at any depth of its code (lazy imports count)."""
  is_package = path.endswith('__init__.py')
  out = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = module.split('.')[: len(module.split('.')) - node.level + is_package]
        base = '.'.join([*parts, base] if base else parts)
      names = [base, *(f'{base}.{a.name}' for a in node.names)]
    else:
      continue
    out.update(n for n in names if n in known)
  out.discard(module)
  out.discard('cnn_jax')  # the top package: empty, its modules are what counts
  return out


def _floor(module: str) -> tuple[str, int]:
  for prefix, floor in FLOORS.items():
    if module == prefix or module.startswith(prefix + '.'):
      return prefix, floor
  raise AssertionError(f'{module} is on no floor: add its package to FLOORS (and the README)')


def _graph() -> dict[str, set[str]]:
  known = _modules()
  return {m: _imports(m, p, known) for m, p in known.items() if m != 'cnn_jax'}


def test_every_module_imports_only_lower_floors():
  wrong = []
  for module, deps in _graph().items():
    package, floor = _floor(module)
    for dep in deps:
      dep_package, dep_floor = _floor(dep)
      if dep_package != package and dep_floor >= floor:
        wrong.append(f'{module} (floor {floor}) imports {dep} (floor {dep_floor})')
  assert not wrong, '\n'.join(sorted(wrong))


def test_no_import_cycle():
  graph = _graph()
  # A package's __init__ importing its own modules is how it exports them, not a cycle.
  for module, deps in graph.items():
    if _modules()[module].endswith('__init__.py'):
      graph[module] = {d for d in deps if not d.startswith(module + '.')}
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  cycles = []

  def visit(module: str, path: list[str]) -> None:
    state[module] = 1
    for dep in sorted(graph.get(module, ())):
      if state.get(dep) == 1:
        cycles.append(' -> '.join([*path[path.index(dep) :], dep]))
      elif dep not in state:
        visit(dep, [*path, dep])
    state[module] = 2

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not cycles, '\n'.join(cycles)


@pytest.mark.parametrize('cycle', [('a', 'b'), ('a', 'b', 'c')])
def test_the_cycle_check_finds_cycles(cycle, monkeypatch):
  """The check itself can fail: a made-up graph with a cycle in it."""
  fake = {m: {cycle[(i + 1) % len(cycle)]} for i, m in enumerate(cycle)}
  monkeypatch.setattr(__import__(__name__), '_graph', lambda: fake)
  monkeypatch.setattr(__import__(__name__), '_modules', lambda: {m: m + '.py' for m in cycle})
  with pytest.raises(AssertionError, match=' -> '.join([cycle[0], *cycle[1:], cycle[0]])):
    test_no_import_cycle()


def test_the_floor_check_finds_an_upward_import(monkeypatch):
  fake = {'cnn_jax.nn.layers': {'cnn_jax.train.loop'}, 'cnn_jax.train.loop': set()}
  monkeypatch.setattr(__import__(__name__), '_graph', lambda: fake)
  with pytest.raises(AssertionError, match=r'cnn_jax.nn.layers \(floor 1\) imports'):
    test_every_module_imports_only_lower_floors()


def test_module_sizes():
  big = {m: n for m, p in _modules().items() if (n := sum(1 for _ in open(p))) > MAX_LINES}
  assert not big, f'modules over {MAX_LINES} lines: {big}'
  with open(os.path.join(ROOT, 'main.py')) as f:
    assert sum(1 for _ in f) < 80, 'main.py is flags only: the logic lives in cnn_jax.cli'
