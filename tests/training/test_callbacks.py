"""Console output: a live bar on a terminal, one line per interval in logs."""

import io

import pytest

from rethink_tf.training import callbacks


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("verbose,terminal,expected", [
    (0, True, (0, False)), (0, False, (0, False)),
    (1, True, (1, False)),   # a live Keras bar
    (1, False, (0, True)),   # a log file: lines with step/total, images/s, ETA
    (2, True, (0, True)), (2, False, (0, True)),
])
def test_console_mode(verbose, terminal, expected):
    stream = _Terminal() if terminal else io.StringIO()
    assert callbacks.console_mode(verbose, stream) == expected
