"""Packaging: pyproject.toml declares every third-party import of imagen_jax/ and scripts/
and nothing unused, the requirements files repeat its lists, the sdist carries what the
README's install commands read and builds a wheel of the package alone, and (slow) that
wheel installs from PyPI into a fresh virtual environment and imports."""

import ast
import collections
import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
REQUIREMENTS = ("requirements.txt", "requirements-test.txt", "requirements-bench.txt")

# Runtime dependencies that no module imports by name, and why each is declared.
NOT_IMPORTED = {
    # jax's compiled backend: jax accepts an older jaxlib than the one verified with it.
    "jaxlib": "pins the jaxlib verified with jax",
    # The gs:// backend of etils.epath (fsspec), which checkpoints, metrics and the
    # trainer's workdir go through: `--workdir gs://...` fails without it.
    "gcsfs": "gs:// paths through etils.epath",
}


def _canon(name: str) -> str:
  """PEP 503 normalized distribution name."""
  return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(spec: str) -> str:
  return _canon(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.strip()).group(0))


RUNTIME = {_req_name(s) for s in PROJECT["dependencies"]}
EXTRAS = {_req_name(s) for specs in PROJECT["optional-dependencies"].values() for s in specs}


def _sources():
  return sorted([*(ROOT / "imagen_jax").rglob("*.py"), *(ROOT / "scripts").glob("*.py")])


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
  names = (
      {n.id for n in ast.walk(handler.type) if isinstance(n, ast.Name)}
      if handler.type
      else {"ImportError"}
  )
  return bool(names & {"ImportError", "ModuleNotFoundError"})


def _imports(path: pathlib.Path):
  """(top-level name, guarded) for each absolute import; guarded: inside a `try` whose
  handler catches ImportError (an optional dependency)."""
  tree = ast.parse(path.read_text(), str(path))
  guarded = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
      guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names = [node.module]
    else:
      continue
    for name in names:
      yield name.split(".")[0], id(node) in guarded


def _third_party_imports():
  """{top-level import name: {relative path: guarded}} over imagen_jax/ and scripts/."""
  found = collections.defaultdict(dict)
  for path in _sources():
    rel = str(path.relative_to(ROOT))
    for name, guarded in _imports(path):
      if name in sys.stdlib_module_names or name == "imagen_jax":
        continue
      # Imported unguarded anywhere in a module makes it required there.
      found[name][rel] = found[name].get(rel, True) and guarded
  return found


def _distributions(name: str) -> set[str]:
  return {_canon(d) for d in importlib.metadata.packages_distributions().get(name, [])}


def test_every_import_is_declared():
  problems = []
  for name, where in sorted(_third_party_imports().items()):
    dists = _distributions(name)
    required = sorted(p for p, guarded in where.items() if not guarded)
    if not dists:
      problems.append(
          f"`import {name}` ({', '.join(sorted(where))}): no installed "
          "distribution provides it (a sibling script? use imagen_jax.*)"
      )
    elif required and not dists & RUNTIME:
      problems.append(
          f"`import {name}` in {', '.join(required)} needs one of {sorted(dists)} "
          "in pyproject.toml's dependencies"
      )
    elif not dists & (RUNTIME | EXTRAS):
      problems.append(
          f"optional `import {name}` ({', '.join(sorted(where))}) needs one of "
          f"{sorted(dists)} in an extra of pyproject.toml"
      )
  assert not problems, "\n".join(problems)


def test_every_runtime_dependency_is_imported_or_explained():
  imported = set()
  for name in _third_party_imports():
    imported |= _distributions(name)
  unused = sorted(RUNTIME - imported - set(NOT_IMPORTED))
  assert not unused, f"declared runtime dependencies nothing imports: {unused}"
  stale = sorted(set(NOT_IMPORTED) - (RUNTIME - imported))
  assert not stale, f"NOT_IMPORTED entries that are imported or not declared: {stale}"


def _requirement_lines(name: str) -> list[str]:
  lines = [l.split("#", 1)[0].strip() for l in (ROOT / name).read_text().splitlines()]
  return [l for l in lines if l]


def test_requirements_files_repeat_pyproject():
  assert PROJECT["requires-python"] == ">=3.11"
  assert sorted(_requirement_lines("requirements.txt")) == sorted(PROJECT["dependencies"])
  test = _requirement_lines("requirements-test.txt")
  assert test[0] == "-r requirements.txt"
  assert sorted(test[1:]) == sorted(PROJECT["optional-dependencies"]["test"])
  # requirements-bench.txt is the peer benchmark's own environment (imagen-pytorch), not an
  # extra of this package.
  assert not any(l.startswith("-") for l in _requirement_lines("requirements-bench.txt"))
  readme = (ROOT / "README.md").read_text()
  for name in ("requirements.txt", "requirements-test.txt"):
    assert f"pip install -r {name} -e ." in readme


def _copy_tree(dest: pathlib.Path) -> pathlib.Path:
  """The checkout's tracked and unignored files (what CI sees), without building in it."""
  files = subprocess.run(
      ["git", "ls-files", "-co", "--exclude-standard", "-z"],
      cwd=ROOT,
      check=True,
      capture_output=True,
      text=True,
  ).stdout.split("\0")
  for rel in filter(None, files):
    src = ROOT / rel
    if src.is_file():
      (dest / rel).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(src, dest / rel)
  return dest


def _build(tmp_path, *args) -> pathlib.Path:
  src = _copy_tree(tmp_path / "src")
  out = tmp_path / "dist"
  subprocess.run(
      [sys.executable, "-m", "build", *args, "--outdir", str(out), str(src)],
      check=True,
      capture_output=True,
      text=True,
      timeout=600,
  )
  return out


def test_sdist_carries_the_install_files_and_builds_a_wheel_of_the_package(tmp_path):
  # `python -m build` builds the sdist, then the wheel from the unpacked sdist.
  out = _build(tmp_path, "--no-isolation")
  (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
  with tarfile.open(sdist) as tar:
    top = f"{sdist.name[:-len('.tar.gz')]}/"
    members = {m.name[len(top) :] for m in tar.getmembers()}
  for name in ("pyproject.toml", "LICENSE", "README.md", *REQUIREMENTS):
    assert name in members, f"{sdist.name} lacks {name}"
  assert "imagen_jax/train/loop.py" in members
  with zipfile.ZipFile(wheel) as whl:
    names = whl.namelist()
    metadata = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
  tops = {n.split("/", 1)[0] for n in names}
  assert tops == {"imagen_jax", "imagen_jax-0.1.0.dist-info"}, tops  # no configs/, scripts/
  assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
  assert "Requires-Python: >=3.11" in metadata
  assert "License-Expression: Apache-2.0" in metadata
  assert "Requires-Dist: gcsfs" in metadata and "Requires-Dist: grain" not in metadata
  assert 'Requires-Dist: tensorflow-cpu>=2.18; extra == "coco"' in metadata


@pytest.mark.slow
def test_wheel_from_sdist_installs_and_imports_in_a_fresh_venv(tmp_path):
  # Isolated build (setuptools from PyPI), then every dependency resolved from PyPI into a
  # venv that sees no other site-packages. ~1-2 min on a 2-core machine with pip's cache.
  out = _build(tmp_path)
  (wheel,) = out.glob("*.whl")
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
  python = venv / "bin" / "python"
  start = time.monotonic()
  subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=1200)
  print(f"pip install of the wheel and its dependencies: {time.monotonic() - start:.0f} s")
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  probe = "import imagen_jax, imagen_jax.train.loop, gcsfs, yaml; print(imagen_jax.__file__)"
  got = subprocess.run(
      [str(python), "-c", probe],
      check=True,
      capture_output=True,
      text=True,
      cwd=tmp_path,
      env=dict(env, JAX_PLATFORMS="cpu"),
      timeout=300,
  ).stdout
  assert str(venv) in got, got
