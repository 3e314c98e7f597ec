"""configs/multi_gpu_train.yaml under torchrun: two CPU processes (gloo), DDP on both networks, rank 0 writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import torch

from tests.conftest import ROOT, reduced_datalist


def _networks(seed: int) -> dict:
    """The small configuration's Glance and Focus weights from torch seed ``seed``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs/train.yaml"), str(ROOT / "configs/small.yaml")])
    torch.manual_seed(seed)
    return {
        k: parser.get_parsed_content(i).state_dict() for k, i in (("glance", "glance_def"), ("focus", "network_def"))
    }


def test_two_process_ddp_training_on_cpu(shared_data, tmp_path):
    """Also a staged start (--init_weights) under DDP: the run ends next to the file's weights, not a fresh seed's."""
    torch.save(_networks(123), tmp_path / "stage1.pt")
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    # from another working folder: every path comes from --bundle_root (Model Zoo CI runs bundles from its root)
    configs = str([str(ROOT / "configs" / f) for f in ("train.yaml", "small.yaml", "multi_gpu_train.yaml")])
    cmd = [
        torchrun, "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
        "-m", "monai.bundle", "run", "training", "--config_file", configs,
        "--bundle_root", str(ROOT), "--dataset_dir", str(shared_data),
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "runs"),
        "--roi_size", "[64,64,32]", "--max_epochs", "2", "--val_interval", "2", "--warmup_iterations", "0",
        "--init_weights", str(tmp_path / "stage1.pt"),
        "--datalist", str(reduced_datalist(tmp_path / "datalist_reduced.json")),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    state = torch.load(tmp_path / "models/checkpoint_last.pt", weights_only=True)
    # 3 training scans split over 2 ranks (2 each, padded), 2 scans per step: one iteration per epoch on each rank
    assert state["trainer"]["iteration"] == 2 and state["trainer"]["max_epochs"] == 2
    assert not any(k.startswith("module.") for k in state["focus"]) and not any(
        k.startswith("module.") for k in state["glance"]
    )
    start, other = torch.load(tmp_path / "stage1.pt", weights_only=True), _networks(7)
    for net in ("glance", "focus"):
        # learnt weights only: batch-norm running statistics follow every batch
        weights = [k for k, v in start[net].items() if v.is_floating_point() and "running_" not in k]
        moved = sum((state[net][k] - start[net][k]).abs().mean() for k in weights)
        apart = sum((other[net][k] - start[net][k]).abs().mean() for k in weights)
        assert moved < 0.1 * apart, (net, float(moved), float(apart))
    # only rank 0 logs and writes: one process's TensorBoard files (train and validation), one checkpoint set
    assert len({p.name.split(".")[5] for p in (tmp_path / "runs").glob("events.out.tfevents.*")}) == 1
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "checkpoint_checkpoint_epoch=2.pt",
        "checkpoint_last.pt",
        "model.pt",
    ]
