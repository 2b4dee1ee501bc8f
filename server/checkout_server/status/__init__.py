"""Statuses, results, re-requests and cleanup, and the watch hub that fans changes out."""
