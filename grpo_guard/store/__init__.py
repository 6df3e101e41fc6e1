"""The store: SQLAlchemy models, sessions, named queries and Alembic migrations.

- ``db``: URLs (GG_DATABASE_URL, GG_DATA_DIR, GG_ARTIFACTS), engines, ``session_scope``, ``upgrade``
- ``queries``: the functions the app calls; rows leave as the dataclasses of ``entities``
- ``recorder``: ``StoreRecorder`` / ``StoreControl``, the trainer's Recorder and Control
- ``lifecycle``: the worker's side of a run's state machine (claim, finish, recover)
- ``artifacts``: images and checkpoints addressed by location strings

Imports no torch (the app uses this package), and importing it loads nothing else.
"""
