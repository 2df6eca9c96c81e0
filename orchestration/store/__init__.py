"""State of executions, steps and attempts: the source of truth, in SQLAlchemy tables."""
