"""Training: the loop (``trainer``) and its parts — rollouts, the chunked policy update,
periodic evaluation, checkpoints, EMA, the state a checkpoint carries, data parallelism, sharded
weights (FSDP2), and the Recorder/Control interface through which the trainer talks to the outside
(``recording``: no torch, the store implements it). Nothing here is imported by the package itself."""
