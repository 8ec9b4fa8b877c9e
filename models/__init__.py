"""The paper's networks and their training and evaluation entry points (python -m models.<name>)."""
