"""Scoring: metrics, checklist, rubric, proficiency and debrief (from the event log only)."""
