"""Benchmark protocols (geneval, ocr, preference, toy) run on any model or checkpoint; results
are stored in the ``evaluations`` table. ``benchmarks``, ``request`` and ``table`` are torch-free;
``runner`` samples and scores."""
