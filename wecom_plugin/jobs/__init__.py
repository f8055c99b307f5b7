"""Delivery in the background: the worker and clock processes and the job types they run."""
