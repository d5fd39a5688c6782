"""How a run that could not produce an unlearned model fails: with an exception, never a saved model.

`PBUTrainer.train` raises them (a library user gets the exception, with the model holding the last finite
weights); the command line exits non-zero with their one-line message, and nothing is saved as unlearned.
"""


class UnlearningFailedError(RuntimeError):
    """The run could not produce an unlearned model; the message says why and what to change."""


class NonFiniteLossError(UnlearningFailedError):
    """The PBU loss or its gradient (the anchor penalty's included) became NaN or infinite; raised before the
    optimizer could apply it."""


class NonFiniteWeightsError(UnlearningFailedError):
    """The weights about to be saved (a checkpoint or the final model) are not finite: they are not written."""


class UnchangedWeightsError(UnlearningFailedError):
    """Training ended with exactly the original weights: nothing was unlearned."""
