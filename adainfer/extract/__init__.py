"""*Extract*, stage one: run the LLM once per setting and keep what each layer read.

- :mod:`~adainfer.extract.extractor`: a task's prompts to its layer records (train, test,
  calibration, fit), from the trace store or from one LLM pass per split; the tuned lens fitted
  or read back; :func:`~adainfer.extract.extractor.prepare` builds a task's tokenized prompts.
- :mod:`~adainfer.extract.passes`: the Lightning side, a LightningModule whose predict step
  reads every layer of a batch.
- :mod:`~adainfer.extract.store`: the trace store, Parquet files keyed by everything that made
  them.

May import: ``adainfer.llm``, ``adainfer.decide`` (the records it fills), ``adainfer.tasks``
and the leaf modules. Not ``compose``, ``engine``, ``run`` or ``report``.
"""
