"""Print the findings of a screening run as a short, readable summary: ``python -m bundle.report eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bundle.writers import CaseOutputs

__all__ = ["summarise_findings", "main"]


def summarise_findings(findings: dict, top: int = 5) -> str:
    """A few lines per scan: the weights' status first, then the scan-level result and the most suspicious lesions."""
    gf = findings.get("glance_focus", {})
    lines = []
    if findings.get("weights", {}).get("status") != "trained":
        lines.append("!! UNTRAINED WEIGHTS: random networks; these findings are NOT results !!")
    lines.append(
        f"{findings['case_id']}: {findings['lesion_count']} lesion(s), "
        f"suspicion score {findings['suspicion_score']:.3f}, "
        f"region {findings['region']} [{findings['region_source']}]"
    )
    lines.append(
        f"  Focus on {gf.get('windows_kept')} of {gf.get('windows_total')} windows (keep fraction "
        f"{gf.get('keep_fraction', 0):.3f}); Glance {gf.get('glance_seconds', 0):.1f} s, Focus "
        f"{gf.get('focus_seconds', 0):.1f} s, total {findings.get('timings', {}).get('total_seconds') or 0:.1f} s"
    )
    for les in findings["lesions"][:top]:
        x, y, z = les["centroid_mm"]
        lines.append(
            f"  #{les['number']}: ({x:.1f}, {y:.1f}, {z:.1f}) mm LPS, {les['volume_mm3']:.0f} mm3, longest axial "
            f"{les['longest_axial_diameter_mm']:.1f} mm, "
            f"p mean {les['mean_probability']:.2f} max {les['max_probability']:.2f}"
        )
    if len(findings["lesions"]) > top:
        lines.append(f"  ... {len(findings['lesions']) - top} more in the findings JSON")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output_dir", help="the inference output_dir (holds <case_id>/<case_id>_findings.json)")
    parser.add_argument("--top", type=int, default=5, help="lesions listed per scan")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    cases = [CaseOutputs(out, d.name) for d in sorted(out.iterdir())] if out.is_dir() else []
    files = [c.findings for c in cases if c.findings.is_file()]
    if not files:
        raise SystemExit(f"no findings under {args.output_dir}")
    for path in files:
        print(summarise_findings(json.loads(path.read_text()), args.top))
        print(f"  -> {path}")


if __name__ == "__main__":
    main()
