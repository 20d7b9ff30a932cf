"""One object for what distillation adds to a training step: the frozen full-precision teacher, taps
on the named layers of both networks, and the feature loss."""
import torch

from distill.features import FeatureTaps, check_same_architecture, trace_for_features
from distill.loss import DistillationLoss


class Distiller:
    """`distiller.forward(network, inputs)` runs the student (`network`, the tapped student or a wrapper
    of it) and the frozen teacher on `inputs` and returns (the student's outputs, sum of coefficient x
    feature loss, {layer: unweighted term}). `distiller(inputs)` is the older form: it compares with the
    features of the student's last forward, which must have been on the same `inputs`."""

    def __init__(self, student, teacher, layer_names, coefficients, feature_loss="mse", extra_layer_names=()):
        # Traced but frozen only once everything is attached: a failed attach leaves the teacher
        # (whose parameters the traced copy shares) trainable as it was.
        self.teacher = trace_for_features(teacher)
        check_same_architecture(student, self.teacher)
        self.student_taps = FeatureTaps(student, layer_names, role="student", extra_layer_names=extra_layer_names)
        try:
            self.teacher_taps = FeatureTaps(self.teacher, layer_names, role="teacher")
            self.loss = DistillationLoss(layer_names, coefficients, feature_loss)
            self.teacher.eval()
            self.teacher.requires_grad_(False)
        except BaseException:
            self.student_taps.remove()  # a failed attach leaves the student as it was
            raise
        self.layer_names = list(layer_names)

    def to(self, device):
        self.teacher.to(device)
        return self

    def forward(self, network, inputs):
        outputs, student_features = self.student_taps.capture(network, inputs)
        with torch.no_grad():
            _, teacher_features = self.teacher_taps.capture(self.teacher, inputs)
        total, terms = self.loss(student_features, teacher_features)
        return outputs, total, terms

    def __call__(self, inputs):
        missing = [name for name in self.layer_names if name not in self.student_taps.outputs]
        if missing:
            raise RuntimeError(f"distillation: no student features for {', '.join(missing)}; run the student on "
                               "the same input first (outputs = student(x), then distillation(x))")
        with torch.no_grad():
            self.teacher(inputs)
        return self.loss(self.student_taps.outputs, self.teacher_taps.outputs)

    def remove(self):
        """Take the taps off the student (and the teacher): the student is then as before."""
        self.student_taps.remove()
        self.teacher_taps.remove()
