"""GF-Screen MONAI Deploy application (see app/app.py)."""
