"""memrepro: a reproducibility benchmark harness for memory-efficient training.

The package holds everything that runs; the Snakefile and rules/ only fan cells out to
`python -m bench ...`.
"""

__version__ = "0.1.0"
