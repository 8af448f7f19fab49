"""*Compose*: from a Hydra config to checked settings, tasks and data, before anything heavy loads.

The only code below ``adainfer.run`` that sees a ``DictConfig``: the config schemas
(:mod:`~adainfer.compose.schema`), the checks of every size, count, flag and name
(:mod:`~adainfer.compose.settings`), what a job reads before any model loads
(:mod:`~adainfer.compose.inputs`) and the config hash that resumes a grid
(:mod:`~adainfer.compose.resume`).

May import: ``adainfer.decide`` (to build and check a policy), ``adainfer.tasks``, the leaf
modules (``choices``, ``errors``, ``files``), Hydra and OmegaConf. Never torch, transformers,
Lightning or MLflow: a config mistake is answered in about a second.
"""
