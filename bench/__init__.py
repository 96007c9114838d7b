"""``make bench``: speed ratios of hoi-distill's stages, each measured in one run against a
baseline on the same input (``python -m bench --help``).

Kept beside the packages, not inside them: nothing in ``hoi``, ``pipeline``, ``trainer``,
``cache``, ``hoidata`` or ``hoicore`` imports it, and it is not installed (``make bench``
runs it from the repository root). Only ratios and rates are printed; nothing here is
asserted (speed lives here, not in tests).

- :mod:`bench.predictions`: the evaluator and the predictions reader;
- :mod:`bench.teacher`: the teacher-cache pipeline;
- :mod:`bench.trainer`: training from the cache, and the test-time cost of student and teacher;
- :mod:`bench.detect`: ``hoi detect`` on the bundled benchmark (after ``make demo``).
"""
