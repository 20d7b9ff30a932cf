"""Distillation from the full-precision teacher and Hessian-based choice of layers.

Typical use in quantization-aware training:
    distiller = Distiller(student_qmodel, teacher_model, cfg.distill_config, cfg.distill_coeff, "mse")
    outputs, distill_total, terms = distiller.forward(student_qmodel, x)   # student and frozen teacher
    loss = task_loss + distill_total
"""
from distill.features import (FeatureTaps, activation_layer_names, called_module_names, check_same_architecture,
                              merge_layer_names, prepare_teacher, trace_for_features)
from distill.loss import FEATURE_LOSS_KINDS, DistillationLoss, feature_distance
from distill.distiller import Distiller
from distill.hessian import LayerTrace, hessian_trace_per_layer, rank_layers, write_ranking

__all__ = ["FeatureTaps", "activation_layer_names", "called_module_names", "check_same_architecture",
           "merge_layer_names", "prepare_teacher", "trace_for_features", "FEATURE_LOSS_KINDS",
           "DistillationLoss", "Distiller", "feature_distance", "LayerTrace", "hessian_trace_per_layer", "rank_layers",
           "write_ranking"]
