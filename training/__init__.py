"""Training code for s1s2-encoders: contrastive pretraining, (fine-tuning), export to hub folders.

This tree imports :mod:`s1s2_encoders` for the models; the library never imports it. Run it from a
checkout of the repository::

    python -m training.pretrain --config training/configs/tiny.yaml
    torchrun --nproc_per_node=4 -m training.pretrain --config training/configs/dual_simclr_swin_t.yaml
    python -m training.export runs/tiny -o exported/tiny

Reusable building blocks (also used by fine-tuning):

* :mod:`training.config` - YAML files -> dataclasses with strict validation;
* :mod:`training.distributed` - torchrun set-up, all-gather with gradients, metric reduction;
* :mod:`training.optim` - parameter groups without weight decay on norms/biases/position tables,
  optimisers, per-iteration LR schedules;
* :mod:`training.checkpoints` - atomic training checkpoints with RNG states, resume;
* :mod:`training.sampling` - a resumable, rank-aware batch sampler that fixes each sample's randomness;
* :mod:`training.trainer` - the generic loop (:class:`~training.trainer.Trainer`);
* :mod:`training.data` - SEN12MS, DFC2020, paired GeoTIFF folders, synthetic scenes;
* :mod:`training.embedding_eval` - linear probe and cross-modal retrieval on frozen embeddings.

Pretraining itself: :mod:`training.losses` (NT-Xent / Dual-SimCLR / SimCLR / MMA),
:mod:`training.contrastive` (model + step function), :mod:`training.pretrain` (entry point),
:mod:`training.export` (training checkpoint -> hub folder), recipes in ``training/configs/``.
"""
