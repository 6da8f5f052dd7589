"""The common base of fedmq's own exceptions: `except FedmqError` catches every error the project raises on
purpose (a bad message, a bad setting, a refused resume...), and nothing else."""

from __future__ import annotations


class FedmqError(Exception):
    """An error fedmq raises on purpose, with a message meant for the person running it."""
