"""Experiments: arms × seeds as one object (``config``), A/B pairing rules (``pairing``), the
over-optimisation alarm (``alarm``), statistics over seeds (``stats``) and the report files
(``report``). Imports no torch."""
