"""Hutchinson's estimator, the pieces shared by the Hessian measures of activations
(distill/hessian.py, distillation layer ranking) and of quantizers (quant/sensitivity.py): seeded
Rademacher probes, v^T H v by double backward, and the batch plumbing both loops need.

E[v^T H v] = tr(H) for probes v with independent +-1 entries; H v comes from differentiating
g . v, g = dL/da taken with create_graph."""
import hashlib

import torch


def rademacher(shape, seed, batch_index, layer, probe_index):
    # Each probe has its own seed derived from (seed, batch, layer name, probe): a layer's estimate
    # then does not depend on which other layers are ranked, in what order, or how probes are
    # batched. Drawn on the CPU so the same seed gives the same probes on any device.
    key = hashlib.blake2b(f"{seed}/{batch_index}/{layer}/{probe_index}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(key, "little") >> 1)
    return torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).to(torch.float32).mul_(2).sub_(1)


def probe_products(activation, gradient, probes):
    """v^T H v for each probe v (stacked on dim 0), H = d gradient / d activation."""
    try:
        # One vmapped double backward for all probes of the chunk: several times faster than a
        # loop; memory grows with the chunk (probe_batch).
        (products,) = torch.autograd.grad(gradient, activation, grad_outputs=probes, retain_graph=True,
                                          is_grads_batched=True, allow_unused=True)
    except (RuntimeError, NotImplementedError):
        # An op without a batching rule for its double backward: one probe at a time.
        products = [torch.autograd.grad(gradient, activation, grad_outputs=probe, retain_graph=True,
                                        allow_unused=True)[0] for probe in probes]
        products = None if products[0] is None else torch.stack(products)
    if products is None:
        return [0.0] * len(probes)
    return (probes * products).flatten(1).sum(1).tolist()


def to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def model_input(batch):
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict) and "input" in batch:
        return batch["input"]
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise ValueError("batch: expected a tensor, a dict with key 'input', or a (input, ...) tuple; "
                     f"got {type(batch).__name__}" + (f" with keys {sorted(batch)}" if isinstance(batch, dict) else ""))
