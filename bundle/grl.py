"""Group Relative Learning (GRL): the objective that trains Glance from Focus results (method.md section 3).

Pure functions on tensors, so that every term can be checked by hand and the training engine only wires networks
to them. Shapes: G windows per step; Glance logits (G, 2); Focus logits (G, 2, *spatial); labels (G, 1, *spatial)
with 0 = background, 1 = lesion.

Gradient routing (a fact of the method): only Glance receives the gradient of L_clip, L_KL and L_CE. The reward is
computed from detached Focus logits, p_old from detached Glance_old logits, and the advantages are detached.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from bundle.networks import select_probability

__all__ = [
    "RewardFn",
    "hit_reward",
    "dice_reward",
    "window_has_lesion",
    "group_advantages",
    "clipped_surrogate",
    "kl_k3",
    "balanced_bce",
    "grl_loss",
    "WindowCELoss",
]

# (seg_logits (G, 2, *spatial), labels (G, 1, *spatial)) -> rewards (G,), without gradient. The replaceable part.
RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _clamp_prob(p: torch.Tensor) -> torch.Tensor:
    """Clamp to [eps, 1 - eps] of p's dtype (float32: 1.19e-7).

    Softmax in float32 underflows to exactly 0 or 1 for confident logits, which makes log(p), log(1 - p), p_old / p
    and p / p_old infinite or nan. 1 - p cannot be resolved below eps anyway, so clamping both ends at eps keeps
    every term finite (KL ratios at most 1 / eps = 8.4e6) and loses gradient only where float32 has lost it.
    Equal inputs stay equal, so rho = 1 and KL = 0 exactly still hold when p == p_old.
    """
    eps = torch.finfo(p.dtype).eps
    return p.clamp(eps, 1 - eps)


def window_has_lesion(labels: torch.Tensor) -> torch.Tensor:
    """c_i: whether window i holds at least one lesion voxel (labels > 0), as a (G,) bool tensor."""
    return labels.flatten(1).gt(0).any(dim=1)


@torch.no_grad()
def hit_reward(seg_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary "hit" reward, the paper's best: r_i = 1 if argmax(s_i) == 1 and y_i == 1 at one voxel or more, else 0.

    A hit says that sending window i to Focus found (part of) a lesion. Lesion-free windows can never score, so
    selecting them is never rewarded. No gradient: the reward is a fixed signal for Glance, not a Focus loss.
    """
    pred = seg_logits.argmax(dim=1) == 1
    return (pred & (labels[:, 0] > 0)).flatten(1).any(dim=1).float()


@torch.no_grad()
def dice_reward(seg_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hard Dice of argmax(s_i) against y_i per window, in [0, 1]: the alternative the paper found worse.

    r_i = 2 |P_i & Y_i| / (|P_i| + |Y_i|), and 0 when Y_i is empty (no lesion to find, as with the hit reward; the
    usual "both empty = 1" convention would reward Glance for selecting healthy windows). r_i > 0 exactly when
    hit_reward gives 1.
    """
    pred = (seg_logits.argmax(dim=1) == 1).flatten(1)
    true = (labels[:, 0] > 0).flatten(1)
    inter = (pred & true).sum(dim=1).float()
    total = (pred.sum(dim=1) + true.sum(dim=1)).float()
    return torch.where(true.any(dim=1), 2 * inter / total.clamp_min(1), torch.zeros_like(total))


def group_advantages(
    rewards: torch.Tensor, groups: torch.Tensor | None = None, std_floor: float = 0.01, clip: float = 5.0
) -> torch.Tensor:
    """A_i = clip((r_i - mean(r)) / max(std(r), std_floor), -clip, clip), mean and std over i's group.

    The group replaces PPO's value network as the baseline (GRPO). ``groups=None``: all G windows of the step form
    one group (the paper). Otherwise an integer group id per window (e.g. the scan each crop came from).
    std is the *population* std (divide by the group size n, not n - 1). A group with no hit (all r = 0), a group
    of one window and an all-hit group get exactly zero advantages; the floor bounds the scale of near-equal (Dice)
    rewards. Detached.
    """
    r = rewards.detach().float()
    if groups is None:
        same = torch.ones(len(r), len(r), dtype=torch.bool, device=r.device)
    else:
        same = groups[:, None] == groups[None, :]
    # Row i of `same` selects i's group; matrix products keep this deterministic on GPU (unlike scatter/bincount).
    member = same.float()
    n = member.sum(dim=1)
    centred = r - member @ r / n
    std = (member @ centred.square() / n).sqrt()
    return (centred / std.clamp_min(std_floor)).clamp(-clip, clip)


def clipped_surrogate(
    p: torch.Tensor,
    p_old: torch.Tensor,
    advantages: torch.Tensor,
    eps: float = 0.1,
    ratio_clip: tuple[float, float] = (0.01, 5.0),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate on the select probability: L = -mean_i min(rho_i A_i, clip(rho_i, 1-eps, 1+eps) A_i).

    rho_i = clip(p_i / p_old_i, *ratio_clip) (the outer clip bounds the ratio when p_old is tiny). The min keeps the
    pessimistic term, so one step cannot profit from moving p by more than eps relative to Glance_old.
    Stats (detached): ``mean_ratio`` = mean of rho (after the outer clip), ``frac_clipped`` = fraction of windows
    whose eps-clipped term is the smaller one and differs from the unclipped one (those give no gradient).
    """
    ratio = (_clamp_prob(p) / _clamp_prob(p_old.detach())).clamp(*ratio_clip)
    adv = advantages.detach()
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps, 1 + eps) * adv
    loss = -torch.minimum(unclipped, clipped).mean()
    stats = {"mean_ratio": ratio.detach().mean(), "frac_clipped": (clipped < unclipped).float().mean()}
    return loss, stats


def kl_k3(p: torch.Tensor, p_old: torch.Tensor, beta: float = 0.01) -> torch.Tensor:
    """beta * mean_i (q_i - log q_i - 1) with q_i = p_old_i / p_i: the "k3" KL estimator, >= 0, exactly 0 at p == p_old.

    Keeps Glance near Glance_old beyond what the ratio clip does.
    """
    q = _clamp_prob(p_old.detach()) / _clamp_prob(p)
    return beta * (q - q.log() - 1).mean()


def balanced_bce(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy of p (G,) against c (G,) (bool or 0/1).

    With P = {i : c_i = 1}, N = {i : c_i = 0} and b_i = -(c_i log p_i + (1 - c_i) log(1 - p_i)) (p clamped to
    [eps, 1 - eps] of its dtype):
        L = 1/2 * mean_{i in P} b_i + 1/2 * mean_{i in N} b_i   when P and N are both non-empty,
        L = mean_i b_i                                          when only one class is present.
    Lesion windows are a minority of crops; without balancing, CE would teach Glance to discard everything.
    """
    p = _clamp_prob(p)
    pos = c.bool()
    bce = -torch.where(pos, p.log(), (1 - p).log())
    n_pos = pos.sum()
    n_neg = pos.numel() - n_pos
    classes_present = (n_pos > 0).float() + (n_neg > 0).float()
    # Weight 1 / (class size * classes present): 1/(2|P|) and 1/(2|N|), or 1/G with one class; no host sync.
    weight = torch.where(pos, 1 / n_pos.clamp_min(1), 1 / n_neg.clamp_min(1)) / classes_present
    return (weight * bce).sum()


def grl_loss(
    glance_logits: torch.Tensor,
    glance_old_logits: torch.Tensor,
    seg_logits: torch.Tensor,
    labels: torch.Tensor,
    seg_loss: torch.Tensor,
    alpha: float = 0.1,
    beta: float = 0.01,
    eps: float = 0.1,
    reward_fn: RewardFn = hit_reward,
    groups: torch.Tensor | None = None,
    threshold: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = L_seg + alpha * L_CE + L_clip + L_KL for one step of G windows, and detached terms for logging.

    ``seg_loss`` is computed by the caller (DiceCELoss on ``seg_logits``), so this module never needs Focus itself.
    Compute ``glance_old_logits`` with Glance_old in the same train/eval mode as Glance: otherwise rho != 1 right
    after a re-sync (the reference code's bug). Logged terms: loss, seg, ce, clip, kl, mean_reward, hit_rate
    (fraction of windows with reward > 0; the mean reward for the binary reward), p_lesion / p_background (mean p
    over windows with / without a lesion voxel, nan when there are none), frac_above_threshold (fraction Glance would
    keep at inference, p >= threshold), mean_ratio and frac_clipped (see ``clipped_surrogate``).
    """
    p = select_probability(glance_logits)
    p_old = select_probability(glance_old_logits.detach())
    rewards = reward_fn(seg_logits.detach(), labels)
    has_lesion = window_has_lesion(labels)
    l_clip, stats = clipped_surrogate(p, p_old, group_advantages(rewards, groups), eps=eps)
    l_kl = kl_k3(p, p_old, beta=beta)
    l_ce = balanced_bce(p, has_lesion)
    total = seg_loss + alpha * l_ce + l_clip + l_kl
    p_det, lesion = p.detach(), has_lesion.float()
    terms = {
        "loss": total.detach(),
        "seg": seg_loss.detach(),
        "ce": l_ce.detach(),
        "clip": l_clip.detach(),
        "kl": l_kl.detach(),
        "mean_reward": rewards.float().mean(),
        "hit_rate": (rewards > 0).float().mean(),
        "p_lesion": (p_det * lesion).sum() / lesion.sum(),  # 0 / 0 = nan without lesion windows
        "p_background": (p_det * (1 - lesion)).sum() / (1 - lesion).sum(),
        "frac_above_threshold": (p_det >= threshold).float().mean(),
        **stats,
    }
    return total, terms


class WindowCELoss(torch.nn.Module):
    """L_CE alone, a ``loss_function`` for MONAI's ``SupervisedTrainer``: ``(glance_logits, labels) -> balanced_bce``.

    Glance's supervised stage (configs/train_glance.yaml) trains Glance on many windows per step with only this term,
    Focus untouched: the reward of GRL carries no signal while Focus misses the lesions, the window labels always do.
    """

    def forward(self, glance_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return balanced_bce(select_probability(glance_logits), window_has_lesion(labels))
