"""The built-in compression methods; importing this package registers every one of them."""

from compression.methods import (  # noqa: F401  (imported for their registration side effect)
    backbone_swap,
    channel_pruning,
    cp_decomposition,
    distillation,
    finetune,
    fuse_operators,
    magnitude_pruning,
    ptq_int8,
    qat_int8,
    statistics_pruning,
    tt_decomposition,
    tucker_decomposition,
    weight_coding,
    weight_sharing,
)
