"""The package layout stays acyclic: no two rope_lab modules import each other.

A local (function-level) import that breaks a cycle still ties the two modules, so every
import statement counts, wherever it is; only ``if TYPE_CHECKING:`` blocks are left out.
"""

import ast
import os

import rope_lab

ROOT = os.path.dirname(rope_lab.__file__)


def _modules() -> dict[str, str]:
  found = {}
  for folder, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = "rope_lab." + os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        found[dotted.removesuffix(".__init__")] = path
  return found


def _imports(path: str, module: str, modules: dict[str, str]) -> set[str]:
  out = set()
  package = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]

  class Visitor(ast.NodeVisitor):

    def visit_If(self, node):
      if "TYPE_CHECKING" not in ast.dump(node.test):
        self.generic_visit(node)

    def visit_Import(self, node):
      out.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node):
      base = node.module or ""
      if node.level:
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
      for alias in node.names:
        full = f"{base}.{alias.name}"
        out.add(full if full in modules else base)

  with open(path) as f:
    Visitor().visit(ast.parse(f.read()))
  return {name for name in out if name in modules and name != module}


def test_no_two_modules_import_each_other():
  modules = _modules()
  graph = {m: _imports(p, m, modules) for m, p in modules.items()}
  mutual = sorted((a, b) for a in graph for b in graph[a] if a < b and a in graph[b])
  assert not mutual, f"modules that import each other: {mutual}"


def test_the_stage_packages_hold_the_pipe():
  modules = _modules()
  for name in ("rope_lab.model.skeleton", "rope_lab.model.attention", "rope_lab.training.loop",
               "rope_lab.training.step", "rope_lab.running.cli", "rope_lab.running.sharding"):
    assert name in modules, name
  top = {m for m in modules if m.count(".") == 1}
  assert top <= {"rope_lab.config", "rope_lab.errors", "rope_lab.typed_values", "rope_lab.results",
                 "rope_lab.model", "rope_lab.training", "rope_lab.running", "rope_lab.pe", "rope_lab.data",
                 "rope_lab.evaluate", "rope_lab.study", "rope_lab.zero_shot", "rope_lab.search",
                 "rope_lab.sweep", "rope_lab.interop"}, sorted(top)
