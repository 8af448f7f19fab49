"""*Decide*, stage two: fit, calibrate and score exit policies on layer records, on the CPU.

- :mod:`~adainfer.decide.records`: the layer records (what a full-depth pass read off every
  layer), the data contract between the stages;
- :mod:`~adainfer.decide.policies`: the exit rules (SVM, CRF, GAP, logistic, the state head,
  never, the oracles);
- :mod:`~adainfer.decide.schedule`, :mod:`~adainfer.decide.risk`, :mod:`~adainfer.decide.bounds`:
  which layers a policy is asked at, and a threshold certified to lose at most ε;
- :mod:`~adainfer.decide.flops` (the paper's Eq. 2), :mod:`~adainfer.decide.costs` (honest
  FLOPs), :mod:`~adainfer.decide.metrics`, :mod:`~adainfer.decide.tradeoff`: what a policy
  saves and what it scores;
- :mod:`~adainfer.decide.stage`: :func:`~adainfer.decide.stage.decide`, one task's traces to an
  outcome.

May import: NumPy, SciPy, pandas, scikit-learn, sklearn-crfsuite, ``adainfer.tasks`` and the
leaf modules (``choices``, ``errors``, ``files``). Never torch, transformers or Lightning, nor
any other adainfer stage: policies are fitted and compared anywhere, from stored traces
(``stage=decide``). The import contracts in ``pyproject.toml`` hold this (tests/test_layers.py).
"""
