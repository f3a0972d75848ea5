"""Shared set-up of the absl mains: quiet logs unless the user asks for them."""

import warnings

from absl import flags
from absl import logging


def quiet_logs():
    """WARNING-level absl logs (TFDS is chatty at INFO) unless --verbosity was given.

    Also hides Keras's warning about a bare tensor fed to a model whose input is named
    (Keras-CV models name theirs 'images'): harmless, and printed at every trace.
    """
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
    warnings.filterwarnings("ignore", message="`shuffle=True` was passed, but will be ignored")
