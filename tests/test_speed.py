"""Speed work: the uint16 device-finished loader with persistent workers, bf16 autocast training,
the DDP checks (oversubscription, unused parameters) and deterministic pooling."""
import os
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from harness.config import Config, ConfigError
from harness.distributed import check_processes_fit_devices, find_unused_parameters, parameters_without_gradient
from harness.setup import MAX_AUTO_WORKERS, EpochIndexSampler, TrainLoader, loader_workers
from harness.speed import DeterministicGlobalAveragePool, Speed, use_deterministic_pooling
from data.raw_cache import RawCache
from data.sid import SIDTrainDataset, read_list
from models.dbf_dble import DBFDBLE
from harness.loss import task_loss
from harness.training import batches_for_epoch


def train_dataset(root, cache_dir, input_kind="mosaic"):
    pairs = read_list(root / "Sony_train_list.txt", root)
    return SIDTrainDataset(pairs, RawCache(cache_dir), patch_size=64, input_kind=input_kind, seed=3)


def device_loader(dataset, workers, batch_size=3):
    sampler = EpochIndexSampler(DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3))
    return TrainLoader(dataset, sampler, batch_size, workers, "cpu", seed=3)


def float_loader(dataset, batch_size=3):
    """Today's path: float samples made in the loader, epoch set on the dataset."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=0,
                      sampler=DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3))


def same_batches(first, second):
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        assert a["name"] == b["name"]
        for key in ("input", "rgb", "mono", "ratio"):
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("input_kind", ["mosaic", "packed"])
def test_uint16_loader_gives_todays_float_batches(synthetic_sid_root, synthetic_sid_cache_dir, input_kind):
    dataset = train_dataset(synthetic_sid_root, synthetic_sid_cache_dir, input_kind)
    iterations = len(dataset) // 3 + 2  # more than one pass: passes and epochs both change the crops
    expected = [b for epoch in (1, 2) for b in batches_for_epoch(float_loader(dataset), epoch, iterations)]
    loader = device_loader(dataset, workers=0)
    got = [b for epoch in (1, 2) for b in batches_for_epoch(loader, epoch, iterations)]
    same_batches(expected, got)


def test_persistent_workers_keep_order_and_exact_resume(synthetic_sid_root, synthetic_sid_cache_dir):
    dataset = train_dataset(synthetic_sid_root, synthetic_sid_cache_dir)
    iterations = len(dataset) // 3 + 1  # each epoch stops inside its second pass
    loader = device_loader(dataset, workers=1)
    run = {epoch: list(batches_for_epoch(loader, epoch, iterations)) for epoch in (1, 2, 3)}
    worker = loader.loader._iterator._workers[0]
    assert loader.loader.persistent_workers and worker.is_alive()
    list(batches_for_epoch(loader, 4, iterations))
    assert loader.loader._iterator._workers[0] is worker, "workers were re-spawned between passes"
    # The float path in-process, and a resumed run (a new loader starting at epoch 2), agree batch for batch.
    same_batches([b for e in (1, 2, 3) for b in batches_for_epoch(float_loader(dataset), e, iterations)],
                 [b for e in (1, 2, 3) for b in run[e]])
    resumed = device_loader(dataset, workers=1)
    same_batches(run[2] + run[3], [b for e in (2, 3) for b in batches_for_epoch(resumed, e, iterations)])


def test_auto_worker_count_leaves_a_cpu_for_each_process():
    assert loader_workers(3) == 3
    # The documented formula: the CPUs this process may use, shared by the node's training processes,
    # less one for each process itself; at least 1, at most MAX_AUTO_WORKERS.
    allowed = os.sched_getaffinity(0)
    try:
        for cpus in sorted({1, len(allowed)}):
            os.sched_setaffinity(0, sorted(allowed)[:cpus])
            for processes in (1, 2, 3, 64):
                assert loader_workers("auto", processes) == max(1, min(MAX_AUTO_WORKERS, cpus // processes - 1)), \
                    (cpus, processes)
    finally:
        os.sched_setaffinity(0, allowed)
    assert MAX_AUTO_WORKERS == 12
    assert loader_workers("auto", processes_per_node=64) == 1


def _train(config, model, batch, steps=6):
    speed = Speed(config, "cpu")
    speed.prepare(model)
    network = speed.wrap(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = task_loss(network(batch["input"]), batch, config.loss)
        speed.backward(loss)
        speed.step(optimizer, model.parameters(), grad_clip=1.0)
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "qat"])
def test_bf16_autocast_trains_and_tracks_float32(quantized):
    generator = torch.Generator().manual_seed(0)
    batch = {"input": torch.rand(2, 1, 64, 64, generator=generator) * 0.5,
             "rgb": torch.rand(2, 3, 64, 64, generator=generator), "mono": torch.rand(2, 1, 64, 64, generator=generator)}
    results = {}
    for precision in ("none", "bf16"):
        torch.manual_seed(1)
        model = DBFDBLE(0.125)
        if quantized:
            from quant import calibrate, prepare_quantized_model
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = prepare_quantized_model(model, {"calibration_batches": 1})
            calibrate(model, [batch["input"]])
        config = Config(speed={"mixed_precision": precision, "channels_last": precision == "bf16"})
        results[precision] = _train(config, model.train(), batch)
    float32, bf16 = results["none"], results["bf16"]
    assert float32[-1] < float32[0] and bf16[-1] < bf16[0]
    for a, b in zip(float32, bf16):
        assert b == pytest.approx(a, rel=0.05), (float32, bf16)


def test_fp16_on_cpu_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="speed.mixed_precision: fp16 needs a CUDA device") as error:
        Speed(Config(speed={"mixed_precision": "fp16"}), "cpu")
    assert "\n" not in str(error.value)


def test_more_processes_than_gpus_is_one_line():
    check_processes_fit_devices(2, 2)
    with pytest.raises(ConfigError) as error:
        check_processes_fit_devices(2, 1)
    message = str(error.value)
    assert "\n" not in message and "2 processes" in message and "--nproc_per_node 1" in message


def test_unused_parameters_are_detected_for_ddp():
    class HalfUsed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = torch.nn.Conv2d(1, 1, 3), torch.nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return self.used(x)

    assert parameters_without_gradient(HalfUsed(), torch.zeros(1, 1, 8, 8)) == ["unused.weight", "unused.bias"]
    # The sync-free LSQ gives every scale and zero point a gradient: DDP needs no unused-parameter search.
    from quant import calibrate, prepare_quantized_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = prepare_quantized_model(DBFDBLE(0.125), {"calibration_batches": 1})
    calibrate(qmodel, [torch.rand(1, 1, 64, 64)])
    scale_before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    assert find_unused_parameters(qmodel, Config(), "cpu") is False
    assert all(torch.equal(v, qmodel.state_dict()[k]) for k, v in scale_before.items()), "the probe changed the model"
    assert find_unused_parameters(qmodel, Config(speed={"find_unused_parameters": True}), "cpu") is True


def test_deterministic_pooling_matches_adaptive_average_pooling():
    model = DBFDBLE(0.125).eval()
    x = torch.rand(1, 1, 64, 64)
    expected = model(x)
    assert use_deterministic_pooling(model) > 0
    assert any(isinstance(m, DeterministicGlobalAveragePool) for m in model.modules())
    for a, b in zip(expected, model(x)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
