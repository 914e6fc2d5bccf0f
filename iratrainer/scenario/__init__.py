"""Scenarios: case files, the deterministic Procedure, autopilots, headless runs."""
