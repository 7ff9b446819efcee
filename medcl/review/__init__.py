"""The review store: clinicians accept, reject or correct every prediction, and nothing is lost.

:mod:`medcl.review.db` holds the tables and :class:`~medcl.review.db.Store` (SQLite or
PostgreSQL, migrated with Alembic on open); :mod:`medcl.review.auth` users and sessions;
:mod:`medcl.review.service` what the app's pages call; :mod:`medcl.review.importer` reads the
``predictions.jsonl`` files pipelines write.
"""
