"""xdist workers map onto GPUs round-robin, and pinning touches CUDA only when it is there."""
import pytest
import torch

from harness.gpus import pin_this_process, worker_device_index


@pytest.mark.parametrize("worker_id,n_gpus,want", [
    ("gw0", 2, 0), ("gw1", 2, 1), ("gw2", 2, 0), ("gw7", 8, 7), ("gw9", 8, 1), ("gw13", 1, 0), ("gw12", 5, 2),
    ("master", 4, 0), ("", 4, 0), (None, 4, 0),
])
def test_worker_device_index(worker_id, n_gpus, want):
    assert worker_device_index(worker_id, n_gpus) == want


@pytest.mark.parametrize("worker_id,n_gpus", [("gw1", 0), ("gw1", -1), ("worker1", 2), ("gw", 2), ("gw-1", 2),
                                              ("gw1x", 2)])
def test_worker_device_index_rejects(worker_id, n_gpus):
    with pytest.raises(ValueError):
        worker_device_index(worker_id, n_gpus)


def test_pin_sets_the_workers_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    assert pin_this_process("gw3") == 1
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw4")
    assert pin_this_process() == 0
    assert calls == [1, 0]


def test_pin_without_cuda_does_nothing(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    assert pin_this_process("gw1") is None
    assert calls == []
