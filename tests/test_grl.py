"""GRL objective (bundle/grl.py): hand-computed values, and gradient routing on tiny real networks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from bundle.grl import (
    WindowCELoss,
    balanced_bce,
    clipped_surrogate,
    dice_reward,
    grl_loss,
    group_advantages,
    hit_reward,
    kl_k3,
    window_has_lesion,
)
from bundle.networks import GlanceNet
from monai.losses import DiceCELoss
from monai.networks.nets import SwinUNETR


def hits(n_hit: int, n: int) -> torch.Tensor:
    return torch.tensor([1.0] * n_hit + [0.0] * (n - n_hit))


def glance_logits_for(p: list[float]) -> torch.Tensor:
    """(G, 2) logits whose softmax[:, 1] is p: (0, logit(p))."""
    p_t = torch.tensor(p, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p_t), torch.log(p_t / (1 - p_t))], dim=1).float()


# --- rewards -----------------------------------------------------------------------------------------------------


def masks_to_logits(pred: torch.Tensor) -> torch.Tensor:
    """(G, *spatial) bool prediction -> (G, 2, *spatial) logits whose argmax is that prediction."""
    lesion = pred.float() * 2 - 1
    return torch.stack([torch.zeros_like(lesion), lesion], dim=1)


def reward_case() -> tuple[torch.Tensor, torch.Tensor]:
    """5 windows of 2 x 2 x 2 voxels; prediction P and label Y per window (flat voxel indices)."""
    pred = torch.zeros(5, 8, dtype=torch.bool)
    label = torch.zeros(5, 8, dtype=torch.bool)
    pred[0, [0, 1]], label[0, [1]] = True, True  # overlap at voxel 1: hit, Dice 2*1 / (2 + 1) = 2/3
    pred[1, [0]], label[1, [5]] = True, True  # lesion missed, false positive elsewhere: no hit, Dice 0
    pred[2, [3]] = True  # lesion-free window with a false positive: no hit, Dice 0
    label[3, [2, 3]] = True  # nothing predicted: no hit, Dice 0
    pred[4, [6, 7]], label[4, [6, 7]] = True, True  # perfect: hit, Dice 1
    return masks_to_logits(pred.view(5, 2, 2, 2)), label.view(5, 1, 2, 2, 2).float()


def test_hit_and_dice_rewards_and_lesion_flag():
    seg_logits, labels = reward_case()
    assert torch.equal(hit_reward(seg_logits, labels), torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(dice_reward(seg_logits, labels), torch.tensor([2 / 3, 0.0, 0.0, 0.0, 1.0]))
    assert torch.equal(window_has_lesion(labels), torch.tensor([True, True, False, True, True]))
    seg_logits.requires_grad_(True)
    assert not hit_reward(seg_logits, labels).requires_grad
    assert not dice_reward(seg_logits, labels).requires_grad


# --- group-relative advantages -----------------------------------------------------------------------------------


def test_no_hit_group_has_zero_advantages_and_zero_clip_loss():
    adv = group_advantages(torch.zeros(16))
    assert torch.equal(adv, torch.zeros(16))
    p, p_old = torch.rand(16) * 0.8 + 0.1, torch.rand(16) * 0.8 + 0.1
    loss, stats = clipped_surrogate(p, p_old, adv)
    assert loss.item() == 0.0 and stats["frac_clipped"].item() == 0.0


def test_one_hit_in_16():
    # mean 1/16, population std sqrt(1/16 * 15/16) = sqrt(15)/16
    # A_hit = (15/16) / (sqrt(15)/16) = sqrt(15) = 3.873; A_miss = -(1/16) / (sqrt(15)/16) = -1/sqrt(15) = -0.258
    adv = group_advantages(hits(1, 16))
    assert adv[0].item() == pytest.approx(math.sqrt(15), abs=1e-6)
    assert torch.allclose(adv[1:], torch.full((15,), -1 / math.sqrt(15)), atol=1e-6)
    # the sample std (n - 1) would give sqrt(15/16) * sqrt(15) = 3.750 instead: population std is the choice
    assert adv[0].item() != pytest.approx(math.sqrt(15 / 16) * math.sqrt(15), abs=1e-3)


def test_five_hits_in_16():
    # mean 5/16, population std sqrt(5 * 11)/16; A_hit = (11/16) / (sqrt(55)/16) = 11/sqrt(55) = 1.483,
    # A_miss = -(5/16) / (sqrt(55)/16) = -5/sqrt(55) = -0.674
    adv = group_advantages(hits(5, 16))
    assert torch.allclose(adv[:5], torch.full((5,), 11 / math.sqrt(55)), atol=1e-6)
    assert torch.allclose(adv[5:], torch.full((11,), -5 / math.sqrt(55)), atol=1e-6)


def test_advantage_clipped_at_5():
    # 1 hit in 64: A_hit = (63/64) / (sqrt(63)/64) = sqrt(63) = 7.94 -> 5; A_miss = -1/sqrt(63) = -0.126 (inside)
    adv = group_advantages(hits(1, 64))
    assert adv[0].item() == 5.0
    assert torch.allclose(adv[1:], torch.full((63,), -1 / math.sqrt(63)), atol=1e-6)
    assert group_advantages(1 - hits(1, 64))[0].item() == -5.0  # one miss among 63 hits: -sqrt(63) -> -5


def test_per_scan_groups_differ_from_one_group():
    # 3 scans x 4 windows, arbitrary ids: scan 7 has 1 hit, scan 2 has 2 hits, scan 5 (healthy) none.
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0])
    groups = torch.tensor([7, 7, 7, 7, 2, 2, 2, 2, 5, 5, 5, 5])
    r3 = math.sqrt(3)
    # one group: 3 hits in 12, mean 1/4, std sqrt(1/4 * 3/4) = sqrt(3)/4:
    # hit (3/4) / (sqrt(3)/4) = sqrt(3), miss -(1/4) / (sqrt(3)/4) = -1/sqrt(3)
    one = torch.tensor([r3, -1 / r3, -1 / r3, -1 / r3, r3, r3, -1 / r3, -1 / r3] + [-1 / r3] * 4)
    assert torch.allclose(group_advantages(rewards), one, atol=1e-6)
    # scan 7: 1 hit in 4 -> sqrt(3), -1/sqrt(3); scan 2: mean 1/2, std 1/2 -> +1, -1; healthy scan 5: exactly 0
    per_scan = group_advantages(rewards, groups)
    assert torch.allclose(per_scan[:8], torch.tensor([r3, -1 / r3, -1 / r3, -1 / r3, 1, 1, -1, -1]), atol=1e-6)
    assert torch.equal(per_scan[8:], torch.zeros(4))


def test_std_floor():
    # Dice-like rewards 0.5 and 0.5 + 2^-10: mean 0.5 + 2^-11, population std 2^-11 = 0.000488 < 0.01, so
    # A = +-2^-11 / 0.01 = +-0.0488 instead of +-1.
    rewards = torch.tensor([0.5, 0.5 + 2**-10])
    expected = torch.tensor([-(2**-11) / 0.01, 2**-11 / 0.01])
    assert torch.allclose(group_advantages(rewards), expected, atol=1e-6)
    assert torch.allclose(group_advantages(rewards, std_floor=0.0), torch.tensor([-1.0, 1.0]), atol=1e-6)
    assert torch.equal(group_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 1])), torch.zeros(2))  # singletons


# --- clipped surrogate, KL, balanced CE --------------------------------------------------------------------------


def test_clipped_surrogate_by_hand():
    eps = 0.1
    p_old = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.05, 0.4])
    p = torch.tensor([0.75, 0.25, 0.25, 0.75, 0.5, 0.4], requires_grad=True)
    adv = torch.tensor([2.0, 2.0, -1.0, -1.0, 1.0, 3.0])
    # rho:           1.5    0.5    0.5    1.5    10->5  1.0
    # rho * A:       3.0    1.0   -0.5   -1.5    5.0    3.0
    # clip(rho) * A: 1.1*2  0.9*2  0.9*-1 1.1*-1 1.1*1  3.0
    #              = 2.2    1.8   -0.9   -1.1    1.1    3.0
    # min:           2.2    1.0   -0.9   -1.5    1.1    3.0   (clipped term chosen in windows 0, 2, 4)
    loss, stats = clipped_surrogate(p, p_old, adv, eps=eps)
    assert loss.item() == pytest.approx(-(2.2 + 1.0 - 0.9 - 1.5 + 1.1 + 3.0) / 6, abs=1e-6)  # -4.9/6
    assert stats["frac_clipped"].item() == pytest.approx(3 / 6)
    assert stats["mean_ratio"].item() == pytest.approx((1.5 + 0.5 + 0.5 + 1.5 + 5 + 1) / 6, abs=1e-6)
    assert not stats["mean_ratio"].requires_grad
    # gradient: clipped windows get none; otherwise d/dp_i = -A_i / (p_old_i * G)
    loss.backward()
    expected = torch.tensor([0.0, -2 / (0.5 * 6), 0.0, 1 / (0.5 * 6), 0.0, -3 / (0.4 * 6)])
    assert torch.allclose(p.grad, expected, atol=1e-6)


def test_outer_ratio_clip():
    # p / p_old = 0.5 / 0.05 = 10 -> 5 and 0.001 / 0.5 = 0.002 -> 0.01
    _, stats = clipped_surrogate(torch.tensor([0.5, 0.001]), torch.tensor([0.05, 0.5]), torch.zeros(2))
    assert stats["mean_ratio"].item() == pytest.approx((5 + 0.01) / 2, abs=1e-6)


def test_kl_k3():
    p = torch.rand(16) * 0.9 + 0.05
    assert torch.equal(kl_k3(p, p.clone()), torch.tensor(0.0))
    assert kl_k3(p, p.flip(0)).item() > 0
    # p = 0.5, p_old = 0.25: q = 0.5, q - ln q - 1 = 0.5 + ln 2 - 1 = 0.19315; second window q = 1 gives 0
    value = kl_k3(torch.tensor([0.5, 0.4]), torch.tensor([0.25, 0.4]), beta=0.01)
    assert value.item() == pytest.approx(0.01 * (0.5 + math.log(2) - 1) / 2, rel=1e-6)


def test_balanced_bce_by_hand():
    p = torch.tensor([0.9, 0.6, 0.2, 0.4, 0.1])
    c = torch.tensor([True, True, False, False, False])
    # positives: -ln 0.9, -ln 0.6; negatives: -ln 0.8, -ln 0.6, -ln 0.9; each class weighs 1/2
    pos = (-math.log(0.9) - math.log(0.6)) / 2
    neg = (-math.log(0.8) - math.log(0.6) - math.log(0.9)) / 3
    assert balanced_bce(p, c).item() == pytest.approx(0.5 * pos + 0.5 * neg, rel=1e-6)  # 0.29393
    assert balanced_bce(p, c.float()).item() == pytest.approx(0.5 * pos + 0.5 * neg, rel=1e-6)
    # one class only: plain mean
    assert balanced_bce(p[2:], c[2:]).item() == pytest.approx(neg, rel=1e-6)
    assert balanced_bce(p[:2], c[:2]).item() == pytest.approx(pos, rel=1e-6)


def test_balanced_bce_weighs_classes_equally():
    # 4 positives at p = 0.2 (b = ln 5) and 12 negatives at p = 0.5 (b = ln 2): L = ln(5)/2 + ln(2)/2, whereas the
    # plain mean would be (4 ln 5 + 12 ln 2) / 16
    c = torch.tensor([True] * 4 + [False] * 12)
    p = torch.tensor([0.2] * 4 + [0.5] * 12)
    assert balanced_bce(p, c).item() == pytest.approx(0.5 * math.log(5) + 0.5 * math.log(2), rel=1e-6)
    # at p = 0.5 everywhere, each class's total gradient has magnitude 1/2 * 1/0.5 = 1
    p = torch.full((16,), 0.5, requires_grad=True)
    balanced_bce(p, c).backward()
    assert p.grad[:4].sum().item() == pytest.approx(-1.0) and p.grad[4:].sum().item() == pytest.approx(1.0)


def test_window_ce_loss_labels_each_window_by_its_lesion_voxels():
    """The Glance stage's loss: window i is a lesion window when its label crop holds one lesion voxel or more."""
    labels = torch.zeros(5, 1, 4, 4, 2)
    labels[0, 0, 1, 2, 1] = 1  # a single voxel makes window 0 a lesion window
    labels[1, 0, :2] = 1
    logits = glance_logits_for([0.9, 0.6, 0.2, 0.4, 0.1])
    pos = (-math.log(0.9) - math.log(0.6)) / 2
    neg = (-math.log(0.8) - math.log(0.6) - math.log(0.9)) / 3
    assert WindowCELoss()(logits, labels).item() == pytest.approx(0.5 * pos + 0.5 * neg, rel=1e-5)
    labels[0] = 0  # window 0 lesion-free: a different loss
    assert WindowCELoss()(logits, labels).item() != pytest.approx(0.5 * pos + 0.5 * neg, rel=1e-3)


def test_saturated_probabilities_stay_finite():
    p = torch.tensor([0.0, 1.0, 0.3])
    assert torch.isfinite(balanced_bce(p, torch.tensor([True, False, True])))
    assert torch.isfinite(kl_k3(p, p.flip(0)))
    assert torch.isfinite(clipped_surrogate(p, p.flip(0), torch.ones(3))[0])


# --- grl_loss on hand-made inputs --------------------------------------------------------------------------------


def test_grl_loss_terms():
    seg_logits, labels = reward_case()  # hits [1, 0, 0, 0, 1], lesion windows [0, 1, 3, 4]
    glance = glance_logits_for([0.8, 0.6, 0.3, 0.4, 0.5])
    old = glance_logits_for([0.8, 0.5, 0.3, 0.5, 0.5])
    seg = torch.tensor(0.7)
    total, terms = grl_loss(glance, old, seg_logits, labels, seg, alpha=0.1, beta=0.01)
    p, p_old = torch.tensor([0.8, 0.6, 0.3, 0.4, 0.5]), torch.tensor([0.8, 0.5, 0.3, 0.5, 0.5])
    c = torch.tensor([True, True, False, True, True])
    adv = group_advantages(torch.tensor([1.0, 0, 0, 0, 1]))
    ce, clip, kl = balanced_bce(p, c), clipped_surrogate(p, p_old, adv)[0], kl_k3(p, p_old, 0.01)
    assert total.item() == pytest.approx(0.7 + 0.1 * ce.item() + clip.item() + kl.item(), abs=1e-5)
    assert terms["seg"].item() == pytest.approx(0.7)
    for key, value in {"ce": ce, "clip": clip, "kl": kl}.items():
        assert terms[key].item() == pytest.approx(value.item(), abs=1e-5)
    assert terms["mean_reward"].item() == terms["hit_rate"].item() == pytest.approx(2 / 5)
    assert terms["p_lesion"].item() == pytest.approx((0.8 + 0.6 + 0.4 + 0.5) / 4, abs=1e-6)
    assert terms["p_background"].item() == pytest.approx(0.3, abs=1e-6)
    assert terms["frac_above_threshold"].item() == pytest.approx(3 / 5)  # 0.8, 0.6, 0.5 (>= 0.5, as the inferer)
    assert terms["mean_ratio"].item() == pytest.approx((1 + 1.2 + 1 + 0.8 + 1) / 5, abs=1e-6)
    # A_miss = -(2/5) / (sqrt(6)/5) < 0: window 1 (rho 1.2) keeps rho * A, window 3 (rho 0.8) takes 0.9 * A
    assert terms["frac_clipped"].item() == pytest.approx(1 / 5)
    # Dice reward: mean reward (2/3 + 1) / 5, hit rate still 2/5
    _, terms = grl_loss(glance, old, seg_logits, labels, seg, reward_fn=dice_reward)
    assert terms["mean_reward"].item() == pytest.approx((2 / 3 + 1) / 5, abs=1e-6)
    assert terms["hit_rate"].item() == pytest.approx(2 / 5)
    # no lesion window at all: p_lesion is nan, the no-hit group leaves only CE and KL (clip exactly 0)
    _, terms = grl_loss(glance, old, seg_logits, torch.zeros_like(labels), seg)
    assert math.isnan(terms["p_lesion"].item()) and terms["clip"].item() == 0.0
    assert terms["loss"].item() == pytest.approx(0.7 + 0.1 * terms["ce"].item() + terms["kl"].item(), abs=1e-6)


# --- gradient routing on tiny real networks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def nets() -> dict:
    """Tiny Glance, its copy Glance_old, tiny Focus, and G = 4 windows of 64 x 32 x 32 (2 with a lesion).

    64 x 32 x 32, not 32^3: SwinUNETR's bottleneck is 1/32 of the input and its InstanceNorm needs more than one voxel.
    """
    torch.manual_seed(0)
    glance = GlanceNet(layers=(1, 1, 1, 1), block_inplanes=(4, 8, 8, 8))
    focus = SwinUNETR(
        in_channels=1, out_channels=2, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), use_v2=True
    )
    labels = torch.zeros(4, 1, 64, 32, 32)
    labels[0, :, 10:20, 5:15, 5:15] = 1
    labels[1, :, 40:44, 20:24, 20:24] = 1
    return {
        "glance": glance,
        "glance_old": copy.deepcopy(glance),
        "focus": focus,
        "x": torch.rand(4, 1, 64, 32, 32),
        "labels": labels,
    }


def grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [param.grad for param in module.parameters()]


def no_grad_reached(module: torch.nn.Module) -> bool:
    return all(g is None or not g.any() for g in grads(module))


def run_step(nets: dict, **kwargs) -> tuple[torch.Tensor, dict]:
    """Forward all three networks with autograd on (so that only grl_loss's own detaching can stop gradients)."""
    for name in ("glance", "glance_old", "focus"):
        nets[name].zero_grad(set_to_none=True)
    x, labels = nets["x"], nets["labels"]
    seg_logits = nets["focus"](x)
    seg_loss = kwargs.pop("seg_loss", lambda s: torch.zeros(()))(seg_logits)
    return grl_loss(nets["glance"](x), nets["glance_old"](x), seg_logits, labels, seg_loss, **kwargs)


def soft_reward(seg_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean lesion probability per window: a reward with a graph back to Focus, unless grl_loss cuts it."""
    return seg_logits.softmax(1)[:, 1].flatten(1).mean(1)


def test_reward_side_terms_train_only_glance(nets):
    # default terms (hit reward, CE and KL); then L_clip alone, with a reward that would be differentiable in Focus
    for kwargs in ({}, {"alpha": 0.0, "beta": 0.0, "reward_fn": soft_reward}):
        total, _ = run_step(nets, **kwargs)
        total.backward()
        assert all(g is None for g in grads(nets["focus"]))
        assert all(g is None for g in grads(nets["glance_old"]))
        assert any(g is not None and g.abs().sum() > 0 for g in grads(nets["glance"]))


def test_seg_loss_trains_only_focus(nets):
    # alpha = beta = 0 and one group per window (advantages exactly 0): L = L_seg + 0
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    total, terms = run_step(
        nets, seg_loss=lambda s: dice_ce(s, nets["labels"]), alpha=0.0, beta=0.0, groups=torch.arange(4)
    )
    assert terms["clip"].item() == 0.0
    total.backward()
    assert no_grad_reached(nets["glance"]) and no_grad_reached(nets["glance_old"])
    assert any(g is not None and g.abs().sum() > 0 for g in grads(nets["focus"]))


def test_ratio_exactly_one_after_resync(nets):
    glance = nets["glance"].train()
    old = copy.deepcopy(glance)  # re-sync, same (train) mode
    x = nets["x"]
    seg_logits = torch.zeros(4, 2, 64, 32, 32)
    _, terms = grl_loss(glance(x), old(x), seg_logits, nets["labels"], torch.zeros(()))
    assert terms["mean_ratio"].item() == 1.0 and terms["frac_clipped"].item() == 0.0
    assert terms["kl"].item() == 0.0
    # the reference code's bug: old copy in eval mode (BatchNorm running statistics) moves rho away from 1
    _, terms = grl_loss(glance(x), old.eval()(x), seg_logits, nets["labels"], torch.zeros(()))
    assert terms["mean_ratio"].item() != 1.0
