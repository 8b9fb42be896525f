"""The package's import graph, read from the source: no cycles, and no library module
imports a command line (so every entry point stays a thin layer over the library)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "phd_jax"
# Entry points: what `python -m` runs and nothing imports. A new command line goes here
# (or, if it is also a library, into LIBRARIES_WITH_A_COMMAND_LINE).
ENTRY_POINTS = {"phd_jax.main", "phd_jax.evaluate", "phd_jax.generate", "phd_jax.sweep",
                "phd_jax.compare", "phd_jax.convert", "phd_jax.eval.fetch", "phd_jax.eval.chase",
                "phd_jax.data.prepare"}
# Libraries that also run as `python -m` (the command is a small `main` inside them).
LIBRARIES_WITH_A_COMMAND_LINE = {"phd_jax.masks", "phd_jax.data.train_tokenizer",
                                 "phd_jax.eval.harness"}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: pathlib.Path, known) -> set[str]:
  """The package modules `name` imports anywhere in its file (function bodies too)."""
  found = set()
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([base] if base else []))
      # `from phd_jax import config` imports the module phd_jax.config
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                 for a in node.names]
    else:
      continue
    found |= {t for t in targets if t in known and t != name}
  return found


def import_graph() -> dict[str, set[str]]:
  known = modules()
  return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(graph):
  """A list of modules forming a cycle, or None."""
  state = {}  # 1: on the current path, 2: done

  def visit(node, path):
    state[node] = 1
    for child in sorted(graph[node]):
      if state.get(child) == 1:
        return path[path.index(child):] + [child]
      if child not in state and (cycle := visit(child, path + [child])):
        return cycle
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node, [node])):
      return cycle
  return None


def test_the_graph_is_read_from_the_source():
  graph = import_graph()
  assert "phd_jax.state" in graph["phd_jax.train"]
  assert "phd_jax.checkpoint" in graph["phd_jax.config"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles():
  assert find_cycle(import_graph()) is None


def test_no_library_module_imports_a_command_line():
  offenders = {f"{name} imports {sorted(deps & ENTRY_POINTS)}"
               for name, deps in import_graph().items() if deps & ENTRY_POINTS}
  assert not offenders


def test_every_command_line_is_classified():
  """A module that runs as `python -m` is an entry point or a library with a command line,
  so a new command cannot slip into the library layer unnoticed."""
  runnable = {name for name, path in modules().items()
              if 'if __name__ == "__main__":' in path.read_text()}
  assert runnable <= ENTRY_POINTS | LIBRARIES_WITH_A_COMMAND_LINE, (
      runnable - ENTRY_POINTS - LIBRARIES_WITH_A_COMMAND_LINE)
