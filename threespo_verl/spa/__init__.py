"""SPA (Stepwise Progress Attribution, DESIGN §3) outside verl: trajectory collection (stage 2), the progress
estimator (stage 3: ``progress``; how it reads a trajectory: ``serialize``; its transformers-Trainer backend:
``pe_trainer``), and the ``threespo-verl spa`` command. The reward and advantage math is in
``threespo_verl.algos.spa``.

Submodules are imported on use (``progress`` pulls torch and transformers)::

    from threespo_verl.spa.collect import collect
    from threespo_verl.spa.progress import ProgressEstimator, serialize, train_pe
"""
