"""Plumbing every stage shares: atomic files, the Ray connection, MLflow tracking, figures, jobs."""
