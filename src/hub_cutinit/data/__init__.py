"""Data for hub_cutinit: dataset resolution, streaming per process, SSL views.

One path for every source (built-in Fashion-MNIST subset, local folder or files, Hub id)::

    from hub_cutinit.data import (resolve_dataset, make_view_transform, SSLImageStream,
                                  make_train_loader)

    ds, image_col, label_col = resolve_dataset("builtin", "train")      # or "uoft-cs/cifar10"
    stream = SSLImageStream(ds, make_view_transform("byol", 32), image_column=image_col,
                            label_column=label_col, rank=accelerator.process_index,
                            world_size=accelerator.num_processes, seed=0)
    loader = make_train_loader(stream, batch_size=256, num_workers=2)  # NOT accelerator.prepare
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)         # then, when resuming: loader.load_state_dict(saved)
        for batch in loader:            # batch["views"]: list of (B, 3, H, W)
            ...                         # saved = loader.state_dict(): per rank, resumes exactly

The training loop uses the one-call builders of :mod:`hub_cutinit.data.pipeline`
(``build_train_stream``, ``plan_evaluation`` — which evaluation the data allows: a test split,
a held-out slice, or none for unlabelled images —, ``count_examples``, ``corrupt_count``,
``corrupt_examples``). See :mod:`hub_cutinit.data.resolve`, :mod:`hub_cutinit.data.transforms`
and :mod:`hub_cutinit.data.stream` for the details.

Example:
    >>> ds, image_col, label_col = resolve_dataset("builtin", "test")
    >>> (image_col, label_col, num_examples(ds))
    ('image', 'label', 2000)
"""

from hub_cutinit.data.device_augment import (
    AUGMENT_ON,
    DeviceAugment,
    DeviceViewTransform,
    make_device_view_transform,
)
from hub_cutinit.data.pipeline import (
    DATASET_KINDS,
    EvalPlan,
    HeldOut,
    UndecodableImagesError,
    accepted_datasets,
    build_eval_loaders,
    build_train_stream,
    check_dataset_spec,
    check_decodable,
    corrupt_count,
    corrupt_examples,
    count_examples,
    dataset_label,
    default_num_workers,
    plan_evaluation,
)
from hub_cutinit.data.resolve import (
    BUILTIN_NAMES,
    builtin_dataset_dir,
    class_names,
    detect_columns,
    num_examples,
    resolve_dataset,
)
from hub_cutinit.data.stream import (
    SSLDataLoader,
    SSLImageStream,
    collate_samples,
    decode_image,
    make_eval_loader,
    make_train_loader,
    shard_eval_loader,
)
from hub_cutinit.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    ViewTransform,
    local_crop_size,
    make_eval_transform,
    make_view_transform,
    normalize_views,
    to_rgb,
)

__all__ = [
    "AUGMENT_ON",
    "DeviceAugment",
    "DeviceViewTransform",
    "make_device_view_transform",
    "BUILTIN_NAMES",
    "DATASET_KINDS",
    "EvalPlan",
    "HeldOut",
    "UndecodableImagesError",
    "accepted_datasets",
    "check_dataset_spec",
    "check_decodable",
    "dataset_label",
    "default_num_workers",
    "plan_evaluation",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EvalTransform",
    "SSLDataLoader",
    "SSLImageStream",
    "ViewTransform",
    "build_eval_loaders",
    "build_train_stream",
    "builtin_dataset_dir",
    "class_names",
    "collate_samples",
    "corrupt_count",
    "corrupt_examples",
    "count_examples",
    "decode_image",
    "detect_columns",
    "local_crop_size",
    "make_eval_loader",
    "make_eval_transform",
    "make_train_loader",
    "make_view_transform",
    "normalize_views",
    "shard_eval_loader",
    "num_examples",
    "resolve_dataset",
    "to_rgb",
]
