"""The old app's logging: the root logger to stdout and to LOG_DIR/orac.log, INFO by default."""
import logging
import os
import sys
from logging.handlers import RotatingFileHandler

LOG_DIR = os.environ.get("LOG_DIR", "logs")
os.makedirs(LOG_DIR, exist_ok=True)
CONSOLE_FORMAT = "%(asctime)s - %(levelname)s - %(name)s - %(message)s"
FILE_FORMAT = "%(asctime)s - %(levelname)s - %(name)s - %(filename)s:%(lineno)d - %(message)s"

root_logger = logging.getLogger()
root_logger.setLevel(getattr(logging, os.environ.get("LOG_LEVEL", "INFO").upper(), logging.INFO))
for handler in root_logger.handlers[:]:
    root_logger.removeHandler(handler)
console_handler = logging.StreamHandler(sys.stdout)
console_handler.setFormatter(logging.Formatter(CONSOLE_FORMAT))
root_logger.addHandler(console_handler)
file_handler = RotatingFileHandler(os.path.join(LOG_DIR, "orac.log"), maxBytes=10 * 1024 * 1024, backupCount=5)
file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
root_logger.addHandler(file_handler)
logging.getLogger(__name__).info("ORAC logger initialized")


def get_logger(name):
    return logging.getLogger(name)
