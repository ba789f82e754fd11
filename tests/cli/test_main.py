"""`jaxalign` entry point: logging set-up."""

import logging

from jaxalign.cli.main import QUIET_LOGGERS, configure_logging


def test_library_info_lines_are_quiet_and_jaxalign_info_shows():
    configure_logging()
    assert all(logging.getLogger(name).getEffectiveLevel() == logging.WARNING for name in QUIET_LOGGERS)
    assert logging.getLogger("jaxalign.train").isEnabledFor(logging.INFO)
