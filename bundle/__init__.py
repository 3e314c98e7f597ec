"""GF-Screen bundle components: preprocessing, Glance and Focus networks, the Glance-Focus inferer, findings, metrics."""
