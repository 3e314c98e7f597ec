"""Group Relative Learning trainer: one MONAI ``SupervisedTrainer`` that updates Focus and Glance together.

Each iteration (method.md section 3): Focus segments all G windows of the step, the binary hit reward of each window
comes from Focus's (detached) output, Glance is updated with the clipped group-relative surrogate, the k3 KL term and
the class-balanced CE, and Focus with its segmentation loss; one backward pass serves both, because the objective
routes each term's gradient to one network only (``bundle.grl``). Glance_old is a frozen copy re-synced every
``sync_interval`` iterations and evaluated in the same normalisation mode as the live Glance, so the ratio is exactly
1 right after a sync.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from bundle.checkpoint import load_weights
from bundle.grl import grl_loss, hit_reward
from bundle.inferer import GlanceFocusInferer, stats_of
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

__all__ = ["GRLTrainer", "GlanceWindowMetrics", "LOGGED_TERMS", "logged_terms", "unwrap"]

# The per-iteration terms logged to the console, TensorBoard and MLflow (the keys `bundle.grl.grl_loss` returns).
LOGGED_TERMS = (
    "loss",
    "seg",
    "ce",
    "clip",
    "kl",
    "mean_reward",
    "hit_rate",
    "p_lesion",
    "p_background",
    "frac_above_threshold",
    "mean_ratio",
    "frac_clipped",
)


def logged_terms(output: dict | list[dict]) -> dict[str, float]:
    """The logged terms of one iteration's output, decollated (a list of per-window dicts) or not."""
    first = output[0] if isinstance(output, list) else output
    return {k: float(first[k]) for k in LOGGED_TERMS}


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the module itself)."""
    return net.module if hasattr(net, "module") else net


class GRLTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose ``network`` is Focus (with ``optimizer`` and ``loss_function``), plus Glance.

    Args:
        glance: the Glance network (possibly DDP-wrapped).
        glance_optimizer: Glance's own optimiser (its schedule is a separate ``LrScheduleHandler``).
        sync_interval: re-sync Glance_old from Glance every K iterations (at iteration 1, K + 1, ...).
        alpha, beta, eps: CE weight, KL weight and ratio-clip epsilon of the objective.
        threshold: Glance keep threshold, only for the logged fraction of windows above it.
        reward_fn: the reward component (binary hit by default).
        windows_per_scan: if set, the advantages are computed per scan (groups of this many consecutive windows, the
            crops of one scan as ``list_data_collate`` lays them out) instead of over the whole step.
        kwargs: passed to ``SupervisedTrainer`` (device, max_epochs, train_data_loader, network, optimizer,
            loss_function, train_handlers, amp, ...).
    """

    def __init__(
        self,
        glance: torch.nn.Module,
        glance_optimizer: torch.optim.Optimizer,
        sync_interval: int = 1,
        alpha: float = 0.1,
        beta: float = 0.01,
        eps: float = 0.1,
        threshold: float = 0.5,
        reward_fn: Callable = hit_reward,
        windows_per_scan: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if sync_interval < 1:
            raise ValueError(f"sync_interval must be >= 1, got {sync_interval}.")
        self.glance = glance
        self.glance_optimizer = glance_optimizer
        self.glance_old = copy.deepcopy(unwrap(glance)).requires_grad_(False)
        self.sync_interval = sync_interval
        self.alpha, self.beta, self.eps, self.threshold = alpha, beta, eps, threshold
        self.reward_fn = reward_fn
        self.windows_per_scan = windows_per_scan

    def sync_old_glance(self) -> None:
        """Glance_old <- Glance (parameters and buffers)."""
        self.glance_old.load_state_dict(unwrap(self.glance).state_dict())

    def load_networks(self, path: str) -> dict:
        """Start from saved Glance and Focus weights (``weights_only=True``); Glance_old follows. Optimisers, schedules
        and the iteration count are untouched: a new training stage, not a resumed run."""
        status = load_weights(path, unwrap(self.glance), unwrap(self.network))
        self.sync_old_glance()
        return status

    def _groups(self, n_windows: int) -> torch.Tensor | None:
        if self.windows_per_scan is None:
            return None
        return torch.arange(n_windows, device=self.state.device) // self.windows_per_scan

    def _iteration(self, engine: GRLTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)[:2]
        if (engine.state.iteration - 1) % engine.sync_interval == 0:
            engine.sync_old_glance()
        engine.network.train()
        engine.glance.train()
        engine.glance_old.train(engine.glance.training)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        engine.glance_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        device_type = torch.device(engine.state.device).type
        with torch.autocast(device_type, enabled=bool(engine.amp and engine.scaler is not None), **engine.amp_kwargs):
            seg_logits = engine.inferer(inputs, engine.network)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            seg_loss = engine.loss_function(seg_logits, targets).mean()
            glance_logits = engine.glance(inputs)
            with torch.no_grad():
                old_logits = engine.glance_old(inputs)
            loss, terms = grl_loss(
                glance_logits,
                old_logits,
                seg_logits,
                targets,
                seg_loss,
                alpha=engine.alpha,
                beta=engine.beta,
                eps=engine.eps,
                reward_fn=engine.reward_fn,
                groups=engine._groups(inputs.shape[0]),
                threshold=engine.threshold,
            )
        engine.state.output[Keys.PRED] = seg_logits
        engine.state.output[Keys.LOSS] = loss
        engine.state.output.update(terms)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.step(engine.glance_optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
            engine.glance_optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class GlanceWindowMetrics:
    """Validation handler: keep fraction and window-level Glance sensitivity / specificity over an epoch.

    After each validation iteration it reads every scan's Glance scores from its prediction (``stats_of``), labels
    each window positive when it holds a lesion voxel of the (preprocessed) label, and counts kept/discarded windows;
    at the end of the epoch it puts ``keep_fraction``, ``glance_sensitivity`` and ``glance_specificity`` into
    ``engine.state.metrics``. The inferer only supplies the window geometry (``tile``).
    """

    def __init__(self, inferer: GlanceFocusInferer, label_key: str = Keys.LABEL, pred_key: str = Keys.PRED) -> None:
        self.inferer = inferer
        self.label_key = label_key
        self.pred_key = pred_key
        self.counts = torch.zeros(4, dtype=torch.long)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.compute)

    def reset(self, engine: Engine) -> None:
        self.counts.zero_()

    def update(self, engine: Engine) -> None:
        for item in engine.state.output:
            (stats,) = stats_of(item[self.pred_key])
            label = torch.as_tensor(item[self.label_key])[-1] > 0  # the label, or its one-hot lesion channel
            tiling = self.inferer.tile(label.shape)
            if any(tiling.pad):
                label = torch.nn.functional.pad(label, tiling.pad)
            positive = torch.tensor([bool(label[s].any()) for s in tiling.slices])
            kept = stats.keep
            self.counts += torch.stack(
                [(kept & positive).sum(), (~kept & positive).sum(), (~kept & ~positive).sum(), (kept & ~positive).sum()]
            )

    def compute(self, engine: Engine) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.counts)  # every rank validated its share of the scans
        tp, fn, tn, fp = (int(c) for c in self.counts)
        total = tp + fn + tn + fp
        engine.state.metrics["keep_fraction"] = (tp + fp) / total if total else float("nan")
        engine.state.metrics["glance_sensitivity"] = tp / (tp + fn) if tp + fn else float("nan")
        engine.state.metrics["glance_specificity"] = tn / (tn + fp) if tn + fp else float("nan")
