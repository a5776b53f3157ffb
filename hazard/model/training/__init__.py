"""The training recipe both cascade stages share, split the way torchtune's recipes are.

- `state`: what a run carries across steps and restarts (step, data position, history, the
  best evaluation so far and early stopping);
- `setup`: model source (local, hub id or `s3://`), LoRA, gradient checkpointing, DeepSpeed;
- `step`: one micro-batch (encode, skip over-long samples, answer-position loss);
- `evaluate`: validation scoring with serving's label-likelihood read-out, gathered over ranks;
- `checkpoint`: save and verified resume (sha256 manifests; DeepSpeed's loader unpickles);
- `export`: the bundle, built from the best checkpoint (fp32 merge, scored as saved).

`ray_jobs/train_loop.py` strings them together on each Ray Train worker and
`ray_jobs/train.py` drives the run.
"""
