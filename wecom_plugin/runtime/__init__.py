"""Coordination through the application database: the one claim primitive, the job queue and
process heartbeats. No broker: the database is the coordinator, so any number of web, worker and
clock processes share work without doing it twice or losing it."""
