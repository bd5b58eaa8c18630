"""regress: a forgetting-regression gate for fine-tuned LLM checkpoints.

Pipeline, one module per stage::

    suites -> backends -> store (records) -> compare -> detectors -> gate -> report

``harness.cli`` is the command line (``regress run|compare|gate|demo|trend|baselines``).
"""

__version__ = "0.1.0"
