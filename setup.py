"""Package discovery: every package under fastgauss/, plus kernels/ installed as fastgauss.kernels.

pyproject.toml holds all other metadata; its [tool.setuptools.package-dir] maps kernels/ to fastgauss.kernels,
which a directory scan cannot find on its own.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["fastgauss", "fastgauss.*"]) + ["fastgauss.kernels"])
