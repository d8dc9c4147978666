"""Enforces the package's dependency direction (STYLE.md §1) from the AST.

Every `import` / `from` statement counts, at any nesting (a function-level
import is still a dependency). The rules name real units only: each
sub-package and top-level module of imagen_jax has exactly one rule, and no
rule names a unit that does not exist. The module-level import graph has no
cycle.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "imagen_jax"

# For each sub-package / top-level module: the project units it may import
# (besides itself).
ALLOWED = {
    "diffusion": set(),
    "models": set(),
    "text": {"storage"},
    # text: the safe safetensors / weights_only torch readers of checkpoints.py; models,
    # train, sampling: clip/noisy.py rebuilds a project-trained noise-aware CLIP
    # (models.NoisyClip, train.clip_task.build_clip, sampling.cascade.restore_run).
    "clip": {"text", "models", "train", "sampling"},
    "data": {"storage", "config_lib"},
    "storage": set(),
    "rehearsal": {"storage", "data", "evaluation"},
    # diffusion only inside the stage defaults (DEFAULT_PERCENTILE), so that
    # importing config_lib stays free of jax.
    "config_lib": {"diffusion"},
    "config_check": {
        "models",
        "diffusion",
        "config_lib",
        "train",
        "parallel",
        "evaluation",
        "data",
    },
    "parallel": set(),
    "pipeline": {"diffusion", "models"},
    "sampling": {
        "diffusion",
        "models",
        "text",
        "pipeline",
        "parallel",
        "config_lib",
        "data",
        "train",
        "storage",
    },
    # clip: the CLIP score (evaluation/clip_score.py loads a CLIP from clip_path).
    "evaluation": {"data", "diffusion", "sampling", "text", "parallel", "storage", "clip"},
    "log_filter": set(),
    "launch": {"config_check"},  # the sweep validates each run's config
    "demo": {
        "sampling",
        "data",
        "train",
        "config_lib",
        "storage",
        "encoder_pretrain",
        "demo_figures",
    },
    # The demo's plot (accuracy per attribute vs w, loss curves from the events) and grid.
    "demo_figures": {"sampling", "train"},
    # The embedded encoder's text-only pretraining: a T5 encoder on the shapes grammar.
    "encoder_pretrain": {"text", "data"},
    # The guidance study: the demo's draws and training, sampling with guides, CLIP scores.
    "guidance_study": {
        "demo",
        "sampling",
        "data",
        "clip",
        "evaluation",
        "edit_study",
        "unclip_study",
    },
    # unCLIP's prior + decoder in the study: the demo's scoring, the prior's sampler.
    "unclip_study": {"demo", "sampling", "data"},
    # The inpainting comparison of the study: the demo's scoring, sampling with edits.
    "edit_study": {"demo", "sampling", "data"},
    "train": {
        "pipeline",
        "data",
        "parallel",
        "evaluation",
        "diffusion",
        "models",
        "text",
        "config_lib",
        "sampling",
        "config_check",
        "storage",
        # train/prior_task.py: the unCLIP prior's frozen CLIP (clip.load_clip).
        "clip",
    },
    # Benchmark tooling sits on top of the trainer, never under it.
    "perf": {
        "pipeline",
        "data",
        "parallel",
        "train",
        "models",
        "diffusion",
        "config_lib",
        "text",
        "storage",
        "sampling",
    },
}

# Directions that must stay closed even if a rule is widened by mistake.
FORBIDDEN = {"train": {"perf"}, "evaluation": {"train", "pipeline"}}


def _modules():
  return sorted(p for p in ROOT.rglob("*.py"))


def _module_name(path):
  parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _units():
  """The sub-packages and top-level modules of imagen_jax (the rules' keys)."""
  packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
  modules = {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
  return packages | modules


def _owner(path):
  rel = path.relative_to(ROOT)
  return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_names(path):
  """(line, dotted name) of every project import in the module, at any depth.

  `from a.b import c` gives "a.b.c" (a module or an attribute of a.b);
  relative imports are resolved against the module's package.
  """
  tree = ast.parse(path.read_text(), str(path))
  name = _module_name(path)
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        up = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(up + ([base] if base else []))
      if base:
        yield node.lineno, base
      for alias in node.names:
        yield node.lineno, f"{base}.{alias.name}"


def _project_imports(path):
  for _, name in _imported_names(path):
    parts = name.split(".")
    if parts[0] == "imagen_jax" and len(parts) > 1:
      yield parts[1]


def test_rules_name_exactly_the_real_units():
  units = _units()
  assert (
      not set(ALLOWED) - units
  ), f"ALLOWED has rules for units that do not exist: {sorted(set(ALLOWED) - units)}"
  assert not units - set(
      ALLOWED
  ), f"imagen_jax units without an import rule: {sorted(units - set(ALLOWED))}"
  for owner, allowed in {**ALLOWED, **FORBIDDEN}.items():
    assert (
        allowed <= units
    ), f"the rule for {owner!r} names units that do not exist: {sorted(allowed - units)}"


def test_forbidden_directions_stay_closed():
  for owner, forbidden in FORBIDDEN.items():
    assert (
        not ALLOWED[owner] & forbidden
    ), f"{owner!r} may not import {sorted(ALLOWED[owner] & forbidden)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_dependency_direction(path):
  rel = path.relative_to(ROOT)
  owner = _owner(path)
  if owner == "__init__":
    return
  allowed = ALLOWED.get(owner)
  assert allowed is not None, f"{rel}: no import rule for {owner!r}"
  for dep in set(_project_imports(path)):
    if dep == owner:
      continue
    assert dep in allowed, f"{rel} imports imagen_jax.{dep}, not allowed"


def _import_graph():
  """{module: modules it imports}, over every import statement at any depth.

  `from p import m` is an edge to module p.m when it exists, else to p (an
  attribute of p). Importing p.m also runs the packages above it, so those
  are edges too, except the importer's own ancestors (already running).
  Names that resolve to no module are returned as `unresolved`.
  """
  modules = {_module_name(p): p for p in _modules()}
  graph, unresolved = {}, []
  for name, path in modules.items():
    own = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
    edges = set()
    for line, target in _imported_names(path):
      if target.split(".")[0] != "imagen_jax":
        continue
      if target not in modules:
        parent = target.rpartition(".")[0]
        if parent not in modules:
          unresolved.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target}")
          continue
        target = parent
      parts = target.split(".")
      for k in range(1, len(parts) + 1):
        dotted = ".".join(parts[:k])
        if dotted not in own and dotted != name:
          edges.add(dotted)
    graph[name] = edges
  return graph, unresolved


def _cycles(graph):
  """Strongly connected components with more than one module (or a self
  loop), each as one concrete cycle `a -> b -> ... -> a`."""
  index, low, stack, on_stack, components = {}, {}, [], set(), []

  def visit(v):  # Tarjan's algorithm; the graph is a few hundred nodes
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
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
      if len(component) > 1 or v in graph[v]:
        components.append(component)

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return [_cycle_in(graph, c) for c in components]


def _cycle_in(graph, component):
  """A shortest cycle through the component's first module (BFS)."""
  start = min(component)
  paths, seen = [[start]], {start}
  while paths:
    path = paths.pop(0)
    for w in sorted(graph[path[-1]] & component):
      if w == start:
        return path + [start]
      if w not in seen:
        seen.add(w)
        paths.append(path + [w])
  raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_import_graph_resolves():
  _, unresolved = _import_graph()
  assert not unresolved, "imports of missing project modules:\n" + "\n".join(unresolved)


def test_no_import_cycles():
  graph, _ = _import_graph()
  cycles = [" -> ".join(c) for c in _cycles(graph)]
  assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_cycle_finder_finds_cycles():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
  assert sorted(_cycles(graph)) == [["a", "b", "c", "a"], ["e", "e"]]


def test_no_private_jax_imports():
  for path in _modules():
    assert "jax._src" not in path.read_text(), path
