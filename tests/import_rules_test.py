"""Enforces the package's dependency direction (STYLE.md §1) from the AST."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "imagen_jax"

# For each sub-package: the project packages it may import (besides itself).
ALLOWED = {
    "diffusion": set(),
    "models": set(),
    "text": {"storage"},
    "data": {"storage"},
    "storage": set(),
    "rehearsal": {"storage", "data", "evaluation"},
    "utils": set(),
    "config_lib": set(),
    "config_check": {"models", "diffusion", "config_lib"},
    "parallel": set(),
    "pipeline": {"diffusion", "models"},
    "sampling": {"diffusion", "models", "text", "pipeline", "parallel",
                 "config_lib", "data", "utils", "train", "storage"},
    "evaluation": {"data", "diffusion", "utils", "sampling", "text",
                   "parallel", "storage"},
    "log_filter": set(),
    "launch": set(),
    "demo": {"sampling", "data", "train", "config_lib", "storage"},
    "train": {"pipeline", "data", "parallel", "evaluation", "diffusion",
              "models", "text", "config_lib", "utils", "sampling",
              "config_check", "storage"},
}


def _project_imports(path):
  tree = ast.parse(path.read_text(), str(path))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    for name in names:
      parts = name.split(".")
      if parts[0] == "imagen_jax" and len(parts) > 1:
        yield parts[1]


def _modules():
  return sorted(p for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(
    p.relative_to(ROOT)))
def test_dependency_direction(path):
  rel = path.relative_to(ROOT)
  owner = rel.parts[0] if len(rel.parts) > 1 else rel.stem
  if owner == "__init__":
    return
  allowed = ALLOWED.get(owner)
  assert allowed is not None, f"{rel}: no import rule for {owner!r}"
  for dep in set(_project_imports(path)):
    if dep == owner:
      continue
    assert dep in allowed, f"{rel} imports imagen_jax.{dep}, not allowed"


def test_no_private_jax_imports():
  for path in _modules():
    assert "jax._src" not in path.read_text(), path
