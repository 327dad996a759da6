"""Persistence and configuration shared by the daemon, the jobs and the workers."""
