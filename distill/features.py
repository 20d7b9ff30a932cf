"""Named intermediate features of the quantized student and the full-precision teacher.

Users name layers the way MQBench's traced graph names them, e.g. `DBLE.dual_conv9.lrelu_dup1`:
MQBench traces the network with torch.fx and gives each extra call of a reused module its own deep
copy, `<name>_dup<k>` for the k-th extra call (`lrelu` = first call of a block's LeakyReLU,
`lrelu_dup1` = second call = the block output). The plain network has no module of that name, so
the teacher is traced here with the same tracer and the same renaming; its set of called modules
then equals the student's minus MQBench's fake quantizers.

Which tensor is captured (the "tap point"):
- Teacher (and any model without fake quantizers): the output of the named module.
- Student: when the named module's output is read only through MQBench's
  `<node>_post_act_fake_quantizer` (the Academic backend inserts one in front of every conv
  input, e.g. after `DBLE.dual_conv9.lrelu_dup1` and `DBF.DBF_conv9.lrelu_dup1`), the
  quantizer's output is captured, i.e. the quantized activation. Reasons: it is the tensor the
  next layer actually computes with, so matching it to the teacher removes the error that
  reaches the head; gradients of the distillation loss then also reach the activation
  quantizer's learnable scale (LSQ/PACT/DSQ), so the clipping range is tuned to keep the
  teacher's features; this is the usual choice of quantization-aware distillation (QKD and
  similar feature-matching QAT methods compare the student's quantized features). A float tap
  would let the student match the teacher before a quantizer that then clips or rounds the
  match away. Pass `after_fake_quantizer=False` for the float output instead. When the output
  has no quantizer (e.g. `DBF.DBF_conv1.lrelu_dup1`, read by a max-pool and a concatenation),
  every consumer reads the float output and that is what is captured. `FeatureTaps.tap_points`
  says, per layer, which module was hooked.
"""
import copy
import re

import torch.nn as nn
from torch.ao.quantization import FakeQuantizeBase
from torch.ao.quantization.observer import ObserverBase
from torch.fx import GraphModule

from helpers.graph_ops import is_rearranging, unsupervised_nodes
from helpers.names import nearest_text, output_tap, tapped_layer_name
from models.tracing import copy_tracing_hooks, explain_trace_failure, make_tracer

# The activation modules whose outputs are the default candidates for the Hessian ranking.
ACTIVATION_TYPES = (nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU,
                    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish)

_DUPLICATE_SUFFIX = "_dup"  # MQBench's spelling; names in user configs depend on it
_DUPLICATE_COMPONENT = re.compile(r"_dup\d+$")


def _unwrap(model):
    # DataParallel / DistributedDataParallel keep the network under `.module`; names are inside.
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def _is_quantization_module(module):
    return isinstance(module, (FakeQuantizeBase, ObserverBase))


def _mqbench_tracer(model):
    # The student is traced by MQBench's tracer with the model's tracing hooks; using the same here
    # keeps the teacher's leaf modules (and so its node and module names) identical to the student's.
    return make_tracer(model)


def _copy_sharing_tensors(module):
    # A per-call copy needs its own module object (so a hook sees only that call) but must keep
    # using the original parameters: weights loaded into the model later then reach every call.
    memo = {id(tensor): tensor for tensor in list(module.parameters()) + list(module.buffers())}
    return copy.deepcopy(module, memo)


def trace_for_features(model, freeze=False):
    """Trace `model` into a GraphModule whose modules are unique per call, named as MQBench names them.

    A module called k > 1 times keeps its name for the first call; later calls get
    `<name>_dup1`, `<name>_dup2`, ... (module objects of their own, sharing the original's
    parameters and buffers). All other modules are the model's own objects, so the graph shares
    the model's weights. With `freeze=True` the result is put in eval mode and its parameters
    stop requiring gradients (which also freezes `model`, whose parameters are shared): use it
    for the teacher. A frozen teacher fed an input that does not require grad records no autograd
    graph, so its forward costs what a `torch.no_grad()` forward costs.
    """
    model = _unwrap(model)
    if isinstance(model, GraphModule) and not _reused_call_targets(model.graph):
        graph_module = model
    else:
        with explain_trace_failure(model):
            graph = _mqbench_tracer(model).trace(model)
        root = dict(model.named_modules())
        calls = {}
        for node in graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
                if calls[node.target] > 1:
                    original = node.target
                    node.target = f"{original}{_DUPLICATE_SUFFIX}{calls[original] - 1}"
                    root[node.target] = _copy_sharing_tensors(root[original])
            elif node.op == "get_attr":
                root[node.target] = _get_attribute(model, node.target)
        graph.lint()
        graph_module = GraphModule(root, graph, type(model).__name__)
        copy_tracing_hooks(model, graph_module)
        for declared in ("input_kind", "outputs"):  # the network contract, dropped by GraphModule
            if hasattr(model, declared):
                setattr(graph_module, declared, getattr(model, declared))
    if freeze:
        graph_module.eval()
        graph_module.requires_grad_(False)
    return graph_module


def prepare_teacher(model):
    """The teacher as distillation needs it: traced with MQBench names, eval mode, frozen."""
    return trace_for_features(model, freeze=True)


def _get_attribute(model, dotted):
    value = model
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _reused_call_targets(graph):
    seen, reused = set(), set()
    for node in graph.nodes:
        if node.op == "call_module":
            (reused if node.target in seen else seen).add(node.target)
    return reused


def function_node_names(model):
    """Names of the traced function and method calls (`add_5`, `cat`, `mul_1`) in execution order:
    distillation taps and the Hessian ranking accept them beside module names. MQBench keeps these
    names when it prepares a model, so the student and the traced teacher agree on them."""
    model = _unwrap(model)
    if not isinstance(model, GraphModule):
        raise ValueError(f"{type(model).__name__} is not traced; call trace_for_features(model) first")
    return [node.name for node in model.graph.nodes if node.op in ("call_function", "call_method")]


def tappable_names(model):
    """Every name FeatureTaps accepts on a traced model: called modules, then function nodes."""
    return merge_layer_names(called_module_names(model), function_node_names(model))


def unsupervised_layers(model, names, declared):
    """The given layer names (modules or function nodes) whose value reaches only outputs declared
    "ignore" (helpers.graph_ops.unsupervised_nodes)."""
    model = _unwrap(model)
    lost = unsupervised_nodes(model, declared)
    if not lost:
        return []
    node_of = {}
    for node in model.graph.nodes:
        if node.op == "call_module":
            node_of.setdefault(tapped_layer_name(node.target), node.name)
        elif node.op in ("call_function", "call_method"):
            node_of.setdefault(node.name, node.name)
    return [name for name in names if node_of.get(name) in lost]


def called_module_names(model):
    """Targets of the call_module nodes of a traced model in execution order, without MQBench's
    fake quantizers: the names a user may give in `distill_config` / `output_layer_list`."""
    model = _unwrap(model)
    if not isinstance(model, GraphModule):
        raise ValueError(f"{type(model).__name__} is not traced; call trace_for_features(model) first")
    modules = dict(model.named_modules())
    names = []
    for node in model.graph.nodes:
        if node.op == "call_module" and not _is_quantization_module(modules[node.target]):
            name = tapped_layer_name(node.target)
            if name not in names:
                names.append(name)
    return names


def _is_network_output(model, node):
    """True when `node`'s value reaches a graph output through rearranging ops only."""
    for user in node.users:
        if user.op == "output":
            return True
        if is_rearranging(model, user) and _is_network_output(model, user):
            return True
    return False


def activation_layer_names(model, include_outputs=True):
    """Called activation modules (LeakyReLU, ReLU, Sigmoid, ...) of a traced model, in execution order.

    `include_outputs=False` leaves out activations that are (a rearrangement of) a network output,
    e.g. `DBF.lrelu` (the mono image) and `DBLE.lrelu` (the RGB image before pixel shuffle).
    """
    model = _unwrap(model)
    names = [name for name in called_module_names(model) if isinstance(model.get_submodule(name), ACTIVATION_TYPES)]
    if include_outputs:
        return names
    outputs = {node.target for node in model.graph.nodes
               if node.op == "call_module" and node.target in names and _is_network_output(model, node)}
    return [name for name in names if name not in outputs]


def merge_layer_names(*name_lists):
    """Concatenate layer-name lists keeping the first occurrence of each name (e.g. the union of
    `distill_config` and `output_layer_list`)."""
    merged = []
    for names in name_lists:
        for name in names or ():
            if name not in merged:
                merged.append(name)
    return merged


class FeatureTaps:
    """Forward hooks that expose named layer outputs as `{name: tensor}` after every forward.

    `FeatureTaps(model, layer_names, role='student', extra_layer_names=output_layer_list)` taps
    the union of the two lists (first occurrence order); `outputs` holds the tensors of the last
    forward (cleared when a new forward starts), still attached to the autograd graph so a loss
    on them reaches the student's weights. Use as a context manager or call `remove()`.

    `model` must be traced (an MQBench-prepared student, or `trace_for_features(teacher)`):
    the layer names only exist there. `role` names the model in error messages. For a student,
    a layer whose output is read only through a `*_post_act_fake_quantizer` is captured after
    that quantizer unless `after_fake_quantizer=False` (see the module docstring for why).
    """

    def __init__(self, model, layer_names, role="model", extra_layer_names=(), after_fake_quantizer=True):
        self.role = role
        self.layer_names = merge_layer_names(layer_names, extra_layer_names)
        self.outputs = {}
        self.tap_points = {}
        self._handles = []
        model = _unwrap(model)
        self._inserted = []  # (graph module, tap node, tapped node) of function-node taps, undone by remove()
        modules = dict(model.named_modules())
        graph = model.graph if isinstance(model, GraphModule) else None
        callable_names = called_module_names(model) if graph is not None else \
            [name for name, module in modules.items() if name and not _is_quantization_module(module)]
        functions = function_node_names(model) if graph is not None else []
        for name in self.layer_names:  # every name checked before anything is hooked
            if name not in callable_names and name not in functions:
                hint = "" if graph is not None else " (the model is not traced: use trace_for_features)"
                raise ValueError(f"{role}: no layer {name!r}{hint}; nearest: "
                                 f"{nearest_text(name, callable_names + functions)}")
        try:
            for name in self.layer_names:
                called = output_tap(name) if output_tap(name) in modules else name
                tap = self._quantizer_reading(graph, modules, called) if (graph is not None and after_fake_quantizer) else None
                if tap is None and name not in callable_names:
                    tap = self._insert_function_tap(model, name)
                    modules[tap] = model.get_submodule(tap)
                self.tap_points[name] = tap or called
                tapped = modules[self.tap_points[name]]
                self._handles.append(tapped.register_forward_hook(self._recorder(name, tapped)))
        except BaseException:
            self.remove()  # nothing half-attached stays behind
            raise
        # A new forward starts: forget the previous one so a stale tensor is never compared.
        self._handles.append(model.register_forward_pre_hook(
            lambda module, args: self.outputs.clear() if module is model else None))

    def _insert_function_tap(self, model, name):
        # A function's output has no module to hook: an Identity module is called on it (its users
        # then read the Identity's output, the same tensor) and removed again by remove().
        node = next(n for n in model.graph.nodes if n.name == name and n.op in ("call_function", "call_method"))
        tap_name = f"_distill_tap_{name}"
        model.add_submodule(tap_name, nn.Identity())
        with model.graph.inserting_after(node):
            tap_node = model.graph.call_module(tap_name, (node,))
        node.replace_all_uses_with(tap_node, delete_user_cb=lambda user: user is not tap_node)
        model.recompile()
        self._inserted.append((model, tap_node, node))
        return tap_name

    @staticmethod
    def _quantizer_reading(graph, modules, name):
        for node in graph.nodes:
            if node.op in ("call_function", "call_method") and node.name == name:
                users = list(node.users)
                if users and all(user.op == "call_module" and isinstance(modules[user.target], FakeQuantizeBase)
                                 for user in users):
                    return users[0].target
                return None
            if node.op == "call_module" and node.target == name:
                users = list(node.users)
                if users and all(user.op == "call_module" and isinstance(modules[user.target], FakeQuantizeBase)
                                 for user in users):
                    return users[0].target
                return None
        return None

    def _recorder(self, name, tapped):
        def record(module, args, output):
            if module is not tapped:
                return  # a deep copy of the model (the ONNX exporter makes one) carries the hooks along
            if name in self.outputs:
                raise RuntimeError(f"{self.role}: layer {name!r} ran twice in one forward; its calls need "
                                   "separate names (trace the model with trace_for_features)")
            self.outputs[name] = output
        return record

    def capture(self, forward, inputs):
        """Runs `forward(inputs)` (the tapped model, or a wrapper of it such as DDP) and returns
        (its result, {layer: tensor} of that very forward): the features come with the call that made them."""
        result = forward(inputs)
        return result, dict(self.outputs)

    def remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for model, tap_node, node in reversed(getattr(self, "_inserted", [])):
            tap_node.replace_all_uses_with(node)
            model.graph.erase_node(tap_node)
            model.delete_submodule(tap_node.target)
            model.recompile()
        self._inserted = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def __getitem__(self, name):
        return self.outputs[name]


def _architecture_signature(model):
    model = _unwrap(model)
    skipped = [name + "." for name, module in model.named_modules() if name and _is_quantization_module(module)]
    signature = {}
    for name, tensor in model.named_parameters(remove_duplicate=False):
        if any(name.startswith(prefix) for prefix in skipped):
            continue
        # Per-call copies exist only in traced models and mirror their original.
        if any(_DUPLICATE_COMPONENT.search(part) for part in name.split(".")[:-1]):
            continue
        signature[name] = tuple(tensor.shape)
    return signature


def check_same_architecture(student, teacher, show=3):
    """Raise a one-line ValueError unless both models have the same parameter names and shapes
    (fake quantizer / observer parameters and per-call copies ignored)."""
    student_shapes, teacher_shapes = _architecture_signature(student), _architecture_signature(teacher)
    if student_shapes == teacher_shapes:
        return
    parts = []
    only_student = [name for name in student_shapes if name not in teacher_shapes]
    only_teacher = [name for name in teacher_shapes if name not in student_shapes]
    differing = [f"{name} {student_shapes[name]} vs {teacher_shapes[name]}"
                 for name in student_shapes if name in teacher_shapes and student_shapes[name] != teacher_shapes[name]]
    for label, items in (("shape differs (student vs teacher)", differing),
                         ("only in student", only_student), ("only in teacher", only_teacher)):
        if items:
            more = f" (+{len(items) - show} more)" if len(items) > show else ""
            parts.append(f"{label} {len(items)}: {', '.join(items[:show])}{more}")
    raise ValueError("student and teacher are different networks: " + "; ".join(parts))
