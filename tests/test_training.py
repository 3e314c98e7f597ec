"""configs/train.yaml on real scans: a few GRL iterations, checkpoints, the Glance_old sync, and resuming."""

from __future__ import annotations

import math
import time

import pytest
import torch
from bundle.checkpoint import load_weights
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from tests.conftest import ROOT, reduced_datalist

TRAIN = [str(ROOT / "configs/train.yaml"), str(ROOT / "configs/small.yaml")]
# 64 x 64 x 32 windows keep CPU iterations short; everything else is the small configuration as shipped.
FAST = {"roi_size": [64, 64, 32], "warmup_iterations": 0, "device": "$torch.device('cpu')", "amp": False}


def _workflow(tmp_path, shared_data, config_file=TRAIN, **override) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=config_file,
        meta_file=str(ROOT / "configs/metadata.json"),
        logging_file=str(ROOT / "configs/logging.conf"),
        workflow_type="train",
        run_id="training",
        bundle_root=str(ROOT),
        dataset_dir=str(shared_data),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "runs"),
        **{**FAST, "datalist": str(reduced_datalist(tmp_path / "datalist_reduced.json")), **override},
    )
    wf.initialize()
    return wf


def _params(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_a_few_iterations_write_checkpoints_and_train_both_networks(shared_data, tmp_path):
    wf = _workflow(tmp_path, shared_data, max_epochs=2, val_interval=2, sync_interval=2)
    trainer = wf.parser.get_parsed_content("train#trainer")
    glance0, focus0 = _params(trainer.glance), _params(trainer.network)
    terms = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: terms.append(
            {k: float(e.state.output[0][k]) for k in ("loss", "seg", "ce", "clip", "kl", "mean_ratio")}
        ),
    )
    wf.run()
    n_iter = 2 * math.ceil(4 / 2)  # 4 training scans (1 labelled, 3 synthesis hosts), 2 per step, 2 epochs
    assert trainer.state.iteration == len(terms) == n_iter
    for t in terms:
        assert all(math.isfinite(v) for v in t.values()), t
    # the ratio is exactly 1 right after each sync (iterations 1 and 3 with sync_interval 2), not in between
    assert terms[0]["mean_ratio"] == 1.0 and terms[2]["mean_ratio"] == 1.0
    assert terms[1]["mean_ratio"] != 1.0
    for before, net in ((glance0, trainer.glance), (focus0, trainer.network)):
        after = net.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    models = tmp_path / "models"
    assert (models / "checkpoint_last.pt").is_file() and (models / "model.pt").is_file()
    # the best checkpoint is what inference loads: same format, weights_only=True
    glance, focus = wf.parser.get_parsed_content("glance_def"), wf.parser.get_parsed_content("network_def")
    status = load_weights(models / "model.pt", glance, focus)
    assert status["status"] == "trained"
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    val = evaluator.state.metrics
    assert 0 <= val["val_mean_dice"] <= 1 and 0 <= val["keep_fraction"] <= 1
    assert val["glance_sensitivity"] in (0.0, 1.0) or 0 < val["glance_sensitivity"] < 1

    # evaluate.yaml validates the best checkpoint with the same pieces and finds the same DSC, writing nothing
    before = sorted(p.name for p in models.iterdir())
    check = ConfigWorkflow(
        config_file=[*TRAIN, str(ROOT / "configs/evaluate.yaml")],
        meta_file=str(ROOT / "configs/metadata.json"),
        logging_file=str(ROOT / "configs/logging.conf"),
        workflow_type="infer",
        run_id="validating",
        bundle_root=str(ROOT),
        dataset_dir=str(shared_data),
        ckpt_dir=str(models),
        ckpt_path=str(models / "model.pt"),
        output_dir=str(tmp_path / "eval"),
        datalist=str(tmp_path / "datalist_reduced.json"),
        **FAST,
    )
    check.initialize()
    check.run()
    metrics = check.parser.get_parsed_content("validate#evaluator").state.metrics
    assert metrics["val_mean_dice"] == pytest.approx(evaluator.state.best_metric, abs=1e-6)
    assert sorted(p.name for p in models.iterdir()) == before


def test_resume_restores_iteration_optimisers_schedules_and_old_glance(shared_data, tmp_path):
    first = _workflow(tmp_path, shared_data, max_epochs=1, val_interval=10, sync_interval=5)
    first.run()
    saved = torch.load(tmp_path / "models/checkpoint_last.pt", weights_only=True)
    assert saved["trainer"]["iteration"] == 2

    resumed = _workflow(tmp_path, shared_data, max_epochs=2, val_interval=10, sync_interval=5, resume=True)
    trainer = resumed.parser.get_parsed_content("train#trainer")
    resumed.parser.get_parsed_content("state_loader")(trainer)
    assert trainer.state.iteration == 2 and trainer.state.epoch == 1
    for key in ("glance_old", "focus", "glance"):
        obj = trainer.glance_old if key == "glance_old" else (trainer.network if key == "focus" else trainer.glance)
        for name, value in obj.state_dict().items():
            assert torch.equal(value, saved[key][name]), (key, name)
    for key in ("focus_optimizer", "glance_optimizer"):
        state = resumed.parser.get_parsed_content(key).state_dict()["state"]
        assert state and all(torch.equal(state[i]["exp_avg"], saved[key]["state"][i]["exp_avg"]) for i in state)
    for key in ("focus_scheduler", "glance_scheduler"):
        assert resumed.parser.get_parsed_content(key).last_epoch == saved[key]["last_epoch"] == 2
    resumed.run()
    assert trainer.state.iteration == 4 and trainer.state.epoch == 2


def test_init_weights_starts_a_new_stage_from_saved_networks(shared_data, tmp_path):
    """--init_weights: the networks start from the file; optimisers, schedules and the iteration count start anew."""
    seeded = _workflow(tmp_path / "a", shared_data)
    seeded_glance = _params(seeded.parser.get_parsed_content("glance"))
    saved = {
        "glance": {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in seeded_glance.items()},
        "focus": {
            k: torch.randn_like(v) if v.is_floating_point() else v
            for k, v in _params(seeded.parser.get_parsed_content("network")).items()
        },
        "focus_optimizer": {"not": "read"},  # a training-state checkpoint holds more than the two networks
    }
    torch.save(saved, tmp_path / "stage1.pt")
    staged = _workflow(tmp_path / "b", shared_data, max_epochs=1, init_weights=str(tmp_path / "stage1.pt"))
    trainer = staged.parser.get_parsed_content("train#trainer")
    at_start = {}

    def record(engine):
        at_start["nets"] = {k: _params(n) for k, n in (("glance", engine.glance), ("focus", engine.network))}
        at_start["glance_old"] = _params(engine.glance_old)
        at_start["iteration"] = engine.state.iteration
        at_start["optimiser_state"] = staged.parser.get_parsed_content("focus_optimizer").state_dict()["state"]

    trainer.add_event_handler(Events.STARTED, record)
    staged.run()
    for key, params in (*at_start["nets"].items(), ("glance", at_start["glance_old"])):
        for name, value in params.items():
            assert torch.equal(value, saved[key][name]), (key, name)
    assert not torch.equal(next(iter(seeded_glance.values())), next(iter(saved["glance"].values())))
    assert at_start["iteration"] == 0 and not at_start["optimiser_state"]
    assert trainer.state.iteration == 2  # 4 training scans (1 labelled + 3 hosts), 2 per step


@pytest.mark.parametrize("bad", [{"sync_interval": 0}])
def test_invalid_trainer_settings_are_rejected(shared_data, tmp_path, bad):
    wf = _workflow(tmp_path, shared_data, **bad)
    with pytest.raises(Exception, match="sync_interval"):
        wf.parser.get_parsed_content("train#trainer")


def test_lesion_free_scans_are_repeated_and_cropped_with_zero_labels(shared_data, tmp_path):
    """A `training_lesion_free` scan (real CT, no label) enters training lesion_free_repeat times, labelled all zero."""
    import json

    lesion = {
        "image": "mirp_sts_sarcoma_ct/STS_002/nifti/image/image.nii.gz",
        "label": "mirp_sts_sarcoma_ct/STS_002/nifti/mask/mask.nii.gz",
    }
    free = {"image": "totalsegmentator_example/example_ct.nii.gz", "region": "abdomen"}
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [lesion], "training_lesion_free": [free], "validation": [lesion]}))
    wf = _workflow(tmp_path, shared_data, datalist=str(datalist), lesion_free_repeat=3)
    items = wf.parser.get_parsed_content("train#data")
    assert len(items) == 1 + 3 and sum("label" not in it for it in items) == 3
    crops = wf.parser.get_parsed_content("train#preprocessing")(items[-1])
    assert len(crops) == 2  # windows_per_scan of the small configuration
    for crop in crops:
        assert crop["image"].shape[1:] == crop["label"].shape[1:] == (64, 64, 32)
        assert not crop["label"].any()
    datalist.write_text(json.dumps({"training": [lesion], "training_lesion_free": [lesion], "validation": [lesion]}))
    with pytest.raises(RuntimeError) as error:  # the config parser wraps the ValueError of bundle.data
        _workflow(tmp_path, shared_data, datalist=str(datalist)).parser.get_parsed_content("train#data")
    assert "has a label" in str(error.value.__cause__)


def test_mlflow_tracking_records_losses_and_validation_metrics(shared_data, tmp_path):
    """MONAI's `--tracking mlflow` option patches MLflow handlers into the trainer and the validator of train.yaml."""
    mlflow = pytest.importorskip("mlflow")  # the test extra installs it
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    wf = ConfigWorkflow(
        config_file=TRAIN,
        meta_file=str(ROOT / "configs/metadata.json"),
        logging_file=str(ROOT / "configs/logging.conf"),
        workflow_type="train",
        run_id="training",
        tracking="mlflow",
        tracking_uri=uri,
        experiment_name="gf_screen_test",
        bundle_root=str(ROOT),
        dataset_dir=str(shared_data),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "runs"),
        max_epochs=1,
        val_interval=1,
        datalist=str(reduced_datalist(tmp_path / "datalist_reduced.json")),
        **FAST,
    )
    wf.initialize()
    wf.run()
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("gf_screen_test")
    runs = client.search_runs([experiment.experiment_id])
    history = {m: client.get_metric_history(r.info.run_id, m) for r in runs for m in r.data.metrics}
    iterations = wf.parser.get_parsed_content("train#trainer").state.iteration
    assert len(history["train_loss"]) == iterations == 2
    assert all(math.isfinite(m.value) for m in history["train_loss"])
    assert 0 <= history["val_mean_dice"][-1].value <= 1 and "keep_fraction" in history


def _fixed_crops(wf, item: dict, pos: float, neg: float, num_samples: int) -> list[dict]:
    """Deterministic crops of one preprocessed scan (the training pipeline's own loading, no augmentation)."""
    from monai.transforms import Compose, RandCropByPosNegLabeld

    data = Compose(wf.parser.get_parsed_content("load_transforms"))(dict(item))
    crop = RandCropByPosNegLabeld(
        keys=["image", "label"],
        label_key="label",
        spatial_size=wf.parser["roi_size"],
        pos=pos,
        neg=neg,
        num_samples=num_samples,
        image_key=None,
    )
    crop.set_random_state(0)
    return crop(data)


def _measure(trainer, lesion: list[dict], free: list[dict]) -> tuple[float, float, float]:
    """Focus Dice on the lesion crops, Glance's mean p(lesion) on lesion and on lesion-free crops (eval mode)."""
    from monai.metrics import DiceMetric

    glance, focus = trainer.glance.eval(), trainer.network.eval()
    x_les = torch.stack([c["image"].as_tensor() for c in lesion])
    y_les = torch.stack([c["label"].as_tensor() for c in lesion])
    x_free = torch.stack([c["image"].as_tensor() for c in free])
    with torch.no_grad():
        pred = focus(x_les).argmax(1, keepdim=True)
        dice = DiceMetric(include_background=False)(pred.float(), (y_les > 0).float()).mean().item()
        p_les = torch.softmax(glance(x_les), 1)[:, 1].mean().item()
        p_free = torch.softmax(glance(x_free), 1)[:, 1].mean().item()
    glance.train(), focus.train()
    return dice, p_les, p_free


def test_overfitting_one_lesion_scan(shared_data, tmp_path):
    """On one real nodule scan the small networks must learn it: Focus Dice far above its start, Glance p(lesion)
    on lesion windows above p on lesion-free windows. Measured (seed 0, 60 iterations, 2-core CPU): Dice 0.01 ->
    0.45, p 0.92 on lesion vs 0.01 on lesion-free windows; the bars leave a wide margin but fail if learning breaks.
    """
    import json

    full = json.loads((ROOT / "configs/datalist.json").read_text())
    item = next(i for i in full["training"] if i["image"].startswith("lidc_idri_0314"))
    datalist = tmp_path / "one_scan.json"
    datalist.write_text(json.dumps({"training": [item], "validation": [item]}))
    wf = _workflow(
        tmp_path,
        shared_data,
        datalist=str(datalist),
        scans_per_step=1,
        windows_per_scan=4,
        learning_rate=1e-3,
        num_workers=0,
        val_interval=10**6,
        max_epochs=60,
        seed=0,
    )
    abs_item = {k: str(shared_data / v) if k in ("image", "label") else v for k, v in item.items()}
    lesion = _fixed_crops(wf, abs_item, pos=1, neg=0, num_samples=4)
    free = [c for c in _fixed_crops(wf, abs_item, pos=0, neg=1, num_samples=16) if not c["label"].any()][:4]
    assert len(lesion) == 4 and len(free) == 4
    trainer = wf.parser.get_parsed_content("train#trainer")
    dice0, _, _ = _measure(trainer, lesion, free)
    wf.run()
    dice, p_les, p_free = _measure(trainer, lesion, free)
    print(f"overfit: Focus Dice {dice0:.3f} -> {dice:.3f}, Glance p lesion {p_les:.3f} vs lesion-free {p_free:.3f}")
    assert trainer.state.iteration == 60
    assert dice > dice0 + 0.25, (dice0, dice)
    assert p_les - p_free > 0.3, (p_les, p_free)


def test_validation_reads_a_synthetic_set_through_the_training_preprocessing(tmp_path, shared_data):
    """--val_datalist/--val_dataset_dir: a set from `python -m bundle.synthesis` (lung nodule in the whole
    TotalSegmentator scan, `host_organ` not mistaken for an organ-map file) is what validation screens."""
    from bundle import synthesis
    from monai.bundle import ConfigParser

    out = tmp_path / "synthetic"
    synthesis.main(
        [
            "--out",
            str(out),
            "--count",
            "1",
            "--seed",
            "5",
            "--source",
            "totalsegmentator_chest",
            "--data_root",
            str(shared_data),
        ]
    )
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"bundle_root": str(ROOT), "dataset_dir": str(shared_data)})
    parser.update({"val_datalist": str(out / "datalist.json"), "val_dataset_dir": str(out)})
    dataset = parser.get_parsed_content("validate#dataset")
    assert [item["id"] for item in dataset.data] == ["synth_0000"]
    item = dataset[0]
    assert item["image"].shape == item["label"].shape and item["label"].sum() > 0
    assert item["region"] == "chest" and "organ" not in item


def test_grl_trains_a_batch_norm_glance_that_validates_in_shared_mode(shared_data, tmp_path):
    """The shared Glance is trained by the same GRL workflow: training runs the network on window crops, validation
    scores every window of each scan from one trunk pass (glance_mode: shared), and its window metrics come out."""
    wf = _workflow(tmp_path, shared_data, max_epochs=1, val_interval=1, glance_norm="batch", glance_mode="shared")
    trainer = wf.parser.get_parsed_content("train#trainer")
    before = _params(trainer.glance)
    wf.run()
    inferer = wf.parser.get_parsed_content("validate#inferer")
    assert inferer.glance_mode == "shared" and inferer.glance is trainer.glance
    assert any(not torch.equal(before[k], v) for k, v in trainer.glance.state_dict().items() if v.is_floating_point())
    metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    assert 0 <= metrics["keep_fraction"] <= 1 and 0 <= metrics["val_mean_dice"] <= 1
    assert math.isfinite(metrics["glance_sensitivity"])


def test_glance_stage_trains_glance_alone_and_writes_focus_back_unchanged(shared_data, tmp_path):
    """configs/train_glance.yaml: Glance learns from the window CE on 4 scans per step; a time limit ends the stage
    cleanly; the model file it writes holds that Glance and the starting Focus bit for bit, loadable by inference."""
    seeded = _workflow(tmp_path / "a", shared_data)
    start = {
        "glance": _params(seeded.parser.get_parsed_content("glance")),
        "focus": {
            k: torch.randn_like(v) if v.is_floating_point() else v
            for k, v in _params(seeded.parser.get_parsed_content("network")).items()
        },
    }
    torch.save(start, tmp_path / "start.pt")
    wf = _workflow(
        tmp_path / "b",
        shared_data,
        config_file=[*TRAIN, str(ROOT / "configs/train_glance.yaml")],
        max_epochs=3,
        init_weights=str(tmp_path / "start.pt"),
        host_repeat=1,
        windows_per_scan=2,
        time_limit_seconds=1,
    )
    trainer = wf.parser.get_parsed_content("train#trainer")
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
    # an iteration can take under the 1 s limit: this handler, registered before the time limit's, makes the first
    # one last longer, so the limit ends the stage after it whatever the machine's speed
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: time.sleep(1.1))
    wf.run()
    assert trainer.network is wf.parser.get_parsed_content("glance")
    # 4 training scans, 4 per step: an iteration per epoch; the 1 s time limit ends the stage after the first
    assert trainer.state.iteration == len(losses) == 1 and trainer.state.max_epochs == 3
    assert all(math.isfinite(v) and v > 0 for v in losses)
    glance, focus = wf.parser.get_parsed_content("glance_def"), wf.parser.get_parsed_content("network_def")
    assert load_weights(tmp_path / "b/models/model.pt", glance, focus)["status"] == "trained"
    for name, value in focus.state_dict().items():
        assert torch.equal(value, start["focus"][name]), name
    trained = glance.state_dict()
    assert any(not torch.equal(start["glance"][k], v) for k, v in trained.items() if v.is_floating_point())
    assert (tmp_path / "b/models/checkpoint_last.pt").is_file()
