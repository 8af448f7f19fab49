"""*Run*: the job. ``run.py``'s door (:mod:`~adainfer.run.cli`) checks the config, then
:mod:`~adainfer.run.job` composes, extracts, decides and logs; :mod:`~adainfer.run.tracking`
keeps MLflow's books, :mod:`~adainfer.run.interrupts` ends a job cleanly on a signal and
:mod:`~adainfer.run.generation` is the generation stage (``task.generate=true``).

The top layer: it may import every other part of adainfer; nothing imports it.
"""
