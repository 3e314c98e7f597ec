"""GF-Screen bundle components: preprocessing, Glance and Focus networks, the Glance-Focus inferer, findings, metrics.

The submodules are imported here so that bundle configs can use ``$import bundle`` and call ``bundle.<module>.<name>``.
"""

from bundle import (
    checkpoint,
    data,
    evaluation,
    findings,
    inferer,
    metrics,
    networks,
    pipeline,
    screening,
    transforms,
    validation,
    writers,
)

__all__ = [
    "checkpoint",
    "data",
    "evaluation",
    "findings",
    "inferer",
    "metrics",
    "networks",
    "pipeline",
    "screening",
    "transforms",
    "validation",
    "writers",
]
