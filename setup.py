"""Installs the imagen_jax package. configs/ and scripts/ are run by path."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements(name):
  lines = (_HERE / name).read_text().splitlines()
  return [l.strip() for l in lines
          if l.strip() and not l.startswith(("#", "-r"))]


setuptools.setup(
    name="imagen_jax",
    version="0.1.0",
    description="Imagen-style cascaded text-to-image diffusion in JAX/Flax.",
    packages=setuptools.find_packages(include=["imagen_jax", "imagen_jax.*"]),
    python_requires=">=3.10",
    install_requires=_requirements("requirements.txt"),
    extras_require={"test": _requirements("requirements-test.txt"),
                    "bench": _requirements("requirements-bench.txt")},
)
