"""The method-agnostic distillation engine: the loop and its checkpoints, the synthetic-set parametrizations,
the contracts that methods and regularizers implement, image optimizers, seeding and precision."""
