"""imagen_jax: Imagen-style cascaded text-to-image diffusion in JAX/Flax.

Importing the package does no work: heavy dependencies (TensorFlow, T5 and
Inception weights) are loaded lazily inside the functions that need them.
"""

__version__ = "0.1.0"
