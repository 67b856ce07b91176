"""The trainer in parts, each with one job (the public entry points are in :mod:`pinnopt.train`):

- :mod:`~pinnopt.training.setup`: what a run derives from its configuration (problem,
  network, objective, method, evaluation set) and its initial state;
- :mod:`~pinnopt.training.methods`: the method of a configuration, its safer settings after a
  divergence and the float32 warnings (the one place where the trainer handles methods);
- :mod:`~pinnopt.training.batches`: the batch of each step, a pure function of the seed and
  the step;
- :mod:`~pinnopt.training.loop`: the loop (budgets, evaluation schedule, NaN guard and
  divergence retry, signals, progress bar), writing rows and checkpoints to a sink;
- :mod:`~pinnopt.training.rundir`: the run directory, the sink that owns every file of a run.
"""
