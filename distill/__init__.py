"""Distillation from the full-precision teacher and Hessian-based choice of layers.

Typical use in quantization-aware training:
    teacher = prepare_teacher(teacher_model)              # traced, eval, frozen
    check_same_architecture(student_qmodel, teacher)
    student_taps = FeatureTaps(student_qmodel, cfg.distill_config, role="student",
                               extra_layer_names=cfg.output_layer_list)
    teacher_taps = FeatureTaps(teacher, cfg.distill_config, role="teacher")
    distill_loss = DistillationLoss(cfg.distill_config, cfg.distill_coeff, kind="mse")
    ... student_qmodel(x); teacher(x)
    distill_total, terms = distill_loss(student_taps.outputs, teacher_taps.outputs)
    loss = task_loss + distill_total
"""
from distill.features import (FeatureTaps, activation_layer_names, called_module_names, check_same_architecture,
                              merge_layer_names, prepare_teacher, trace_for_features)
from distill.loss import FEATURE_LOSS_KINDS, DistillationLoss, feature_distance
from distill.attach import Distillation
from distill.hessian import LayerTrace, hessian_trace_per_layer, rank_layers, write_ranking

__all__ = ["Distillation", "FeatureTaps", "activation_layer_names", "called_module_names", "check_same_architecture",
           "merge_layer_names", "prepare_teacher", "trace_for_features", "FEATURE_LOSS_KINDS",
           "DistillationLoss", "feature_distance", "LayerTrace", "hessian_trace_per_layer", "rank_layers",
           "write_ranking"]
