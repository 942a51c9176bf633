"""Speed and memory benchmarks of the trainer and of the deployed UNeXt, one module a concern:
:mod:`.train`, :mod:`.infer`, :mod:`.evaluate`, :mod:`.reference` (beside the authors'
implementation), :mod:`.gpu_check` (the GPU check, built on the others), their shared :mod:`.timing`
helpers, and :mod:`.cli` (``python -m custom.tools.bench``), which calls them. The ties to the other
tools run one way: the GPU check and the reference comparison use :mod:`custom.tools.compare`'s
pieces (runs, method names); nothing outside this package imports it.

Subcommands (a ``fire`` CLI whose options are each benchmark function's parameters, progress bars
on stderr, ``--json`` prints one JSON object and nothing else on stdout)::

    # median seconds per training iteration of custom.training.trainer.SemiSupervisedTrainer built from
    # the bundle configs (default: the paper's method, 224 px, batch 5 with 1 labelled, 2 threads,
    # fp32, synthetic data through the bundle's own data pipeline), beside the compute floor
    # measured in the same run
    python -m custom.tools.bench train
    python -m custom.tools.bench train --amp bf16 --json
    python -m custom.tools.bench train --data real --dataset-dir data/psfhs

    # images/s and latency of the deployed UNeXt: eager, channels-last, TorchScript, ONNX Runtime
    python -m custom.tools.bench infer --sizes "[256, 448]"

    # frames/s of the evaluation path on real PSFHS label maps (metrics, resize back, report,
    # overlays), optionally beside the previous metrics implementation kept in tests/
    python -m custom.tools.bench evaluate --dataset-dir ../shared/data/psfhs --frames 100 --threads 1 \
        --reference tests/metrics_reference.py

    # torch.compile through the persistent compile cache (custom.utils.compile_cache); the first,
    # compiling iteration is reported apart (a later run with the same shapes loads the kernels)
    python -m custom.tools.bench train --compile true [--compile-cache DIR]

    # our iteration beside the authors' public implementation fetched outside the repository
    # (custom.tools.bench.reference): interleaved rounds, throughput and peak-memory ratios
    python -m custom.tools.bench reference --path REF/DACL-for-Semi-supervised-Ultrasound-Segmentation \\
        --python REF/venv/bin/python --variants "[paper, ours+bf16]"

    # the GPU check (custom.tools.bench.gpu_check): one JSON file of the train/infer benchmarks at 448 px and
    # short real PSFHS trainings; --tiny true runs it on the CPU at 64 px (its test)
    python -m custom.tools.bench gpu --out gpu_check.json --dataset-dir ../shared/data/psfhs

On a machine whose cores are shared with other jobs, run with ``OMP_WAIT_POLICY=PASSIVE``
(it must be set before torch loads; the value is recorded in the result's ``config``):
OpenMP's default spin-waiting of the idle threads costs far more than the compute there.

How ``train`` measures:

* the trainer is ``train#trainer`` of ``common.yaml + train.yaml + methods/<method>.yaml`` built with
  ``monai.bundle.ConfigParser`` and the overrides below; its per-epoch and logging handlers
  (validation, leader selection, state saving, Stats/TensorBoard, progress bar) are removed,
  the learning-rate schedulers are kept. ``ict_start`` is 0 so that every term is computed.
* an Ignite handler pair times each iteration from ``GET_BATCH_STARTED`` to the end of
  ``ITERATION_COMPLETED`` (attached last, so the metric and post-processing handlers are
  inside); the data-loader wait is ``GET_BATCH_STARTED -> GET_BATCH_COMPLETED`` (the labelled
  batch) plus the time in the unlabelled stream's ``next()`` (drawn inside the iteration).
* the compute floor is plain PyTorch on the trainer's own modules and the same shapes,
  threads, autocast and memory format: forward+backward of each network on the whole batch,
  forward+backward of each ICT network on the mixed images, forward (no grad) of the EMA
  teacher on the unlabelled images. Each floor component is measured right after each
  training iteration (interleaved, so both see the same load on a shared machine; the floor's
  gradients are discarded by the next iteration's ``zero_grad``). ``floor_s`` is the sum of the
  component medians.
"""

from custom.utils.lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__, __path__)
