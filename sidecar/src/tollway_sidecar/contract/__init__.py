"""Dependency-free contract modules shared by the sidecar, the operator and the meter."""
