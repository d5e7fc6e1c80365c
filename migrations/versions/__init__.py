"""Alembic revisions. A package so that the wheel carries it like the others;
alembic skips this file."""
