"""Rules: pure Python, deterministic, the clock passed in. No Flask, no SQLAlchemy, no HTTP."""
