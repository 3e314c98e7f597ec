"""Weight-space interpolation between a model and one fine-tuned from it (WiSE-FT, Wortsman et al., CVPR 2022).

Every stage since 0.2.0 started from the 0.2.0 weights, and the stages that learnt the real sarcomas lost the chest
lesions 0.2.0 finds. Networks fine-tuned from a common start usually lie in one basin of the loss, so the straight
line between the two sets of weights, ``(1 - alpha) * base + alpha * tuned``, often keeps what each end does well;
``alpha`` 0 is ``base``, 1 is ``tuned``. Only the networks named are interpolated; the others are taken from ``tuned``
(e.g. a Glance trained with a different stem stride, whose weights have the same shapes but another function).
Integer buffers (batch-norm step counters) come from ``tuned``. Example::

    python -m bundle.interpolate --base models/model.pt --tuned models/stages/run19.pt --alpha 0.5 \\
        --networks focus --output runs/wise/alpha0.5.pt

writes the weights atomically and ``<output>.json`` beside them: the command, both inputs' sha256, ``alpha``, the
networks and the output's sha256. The inputs are only read.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from bundle.checkpoint import WeightsError, read_weights, weights_sha256
from bundle.writers import atomic_path, atomic_write_json

__all__ = ["NETWORKS", "interpolate_state", "interpolate_weights", "main"]

NETWORKS = ("glance", "focus")


def interpolate_state(
    base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * base + alpha * tuned`` for every floating-point tensor; other tensors from ``tuned``.

    The two state dicts must hold the same keys with the same shapes: anything else is not one network fine-tuned.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (0: base, 1: tuned), got {alpha}")
    if base.keys() != tuned.keys():
        only = sorted(set(base) ^ set(tuned))
        raise ValueError(f"the state dicts hold different parameters ({len(only)} differ, first: {only[0]})")
    out = {}
    for key, t in tuned.items():
        b = base[key]
        if b.shape != t.shape:
            raise ValueError(f"{key}: shape {tuple(b.shape)} in base, {tuple(t.shape)} in tuned")
        out[key] = torch.lerp(b.to(t.dtype), t, alpha) if t.is_floating_point() else t.clone()
    return out


def interpolate_weights(
    base: str | Path,
    tuned: str | Path,
    alpha: float,
    output: str | Path,
    networks: Sequence[str] = NETWORKS,
    command: str | None = None,
) -> dict:
    """Write the interpolated ``{"glance", "focus"}`` weights to ``output`` atomically; return the record (with
    ``command``, the command line that asked for it, when given)."""
    base, tuned, output = Path(base), Path(tuned), Path(output)
    if output.resolve() in (base.resolve(), tuned.resolve()):
        raise ValueError(f"--output {output} is one of the inputs; the inputs are never overwritten")
    unknown = set(networks) - set(NETWORKS)
    if unknown or not networks:
        raise ValueError(f"--networks must name some of {NETWORKS}, got {list(networks)}")
    b, t = read_weights(base), read_weights(tuned)
    state = {
        name: interpolate_state(b[name], t[name], alpha) if name in networks else dict(t[name]) for name in NETWORKS
    }
    with atomic_path(output, ".pt") as tmp:
        torch.save(state, tmp)
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "rule": "(1 - alpha) * base + alpha * tuned for the floating-point tensors of the networks named; the other "
        "networks and integer buffers from tuned",
        "alpha": alpha,
        "networks": sorted(networks),
        "base": {"file": str(base), "sha256": weights_sha256(base)},
        "tuned": {"file": str(tuned), "sha256": weights_sha256(tuned)},
        "output": {"file": str(output), "sha256": weights_sha256(output)},
    }
    atomic_write_json(record, output.with_name(output.name + ".json"))
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bundle.interpolate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the weights fine-tuning started from (alpha 0)")
    parser.add_argument("--tuned", required=True, help="the fine-tuned weights (alpha 1)")
    parser.add_argument("--alpha", type=float, required=True, help="0: base, 1: tuned")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--output", required=True, help="the weights file to write (never one of the inputs)")
    args = parser.parse_args(argv)
    try:
        command = shlex.join(["python", "-m", "bundle.interpolate", *(argv if argv is not None else sys.argv[1:])])
        record = interpolate_weights(args.base, args.tuned, args.alpha, args.output, args.networks, command)
    except (ValueError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {record['output']['file']} (sha256 {record['output']['sha256'][:12]}): alpha {args.alpha} of "
        f"{', '.join(record['networks'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
