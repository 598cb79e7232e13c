"""The app's logging: ``get_logger(name)`` as ORAC's (a plain logging.getLogger)."""
import logging


def get_logger(name):
    return logging.getLogger(name)
