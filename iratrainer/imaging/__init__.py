"""Imaging: C-arm geometry, X-ray physics, the NumPy reference renderer, modes and dose.

Reads scene snapshots; never changes the simulation.
"""
