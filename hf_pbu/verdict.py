"""Whether a run forgot, and, when it did not, the one thing to change.

A run succeeds only if it forgot: its forget-train accuracy (the whole forget set S_n, the stop rule's measure) at
the end is at or below `stop_forget_accuracy`. Anything else is a failed run, whatever else went well: the results
say `forgotten: false`, the card says so, the command line exits non-zero and does not push.
"""

from .config import PBUConfig


def is_forgotten(forget_train_accuracy: float | None, args: PBUConfig) -> bool | None:
    """Forgotten when the forget-train accuracy is at or below `args.stop_forget_accuracy`; None when not measured."""
    if forget_train_accuracy is None:
        return None
    return forget_train_accuracy <= args.stop_forget_accuracy


def not_forgotten_message(forget_train_accuracy: float, steps: int, budget: int, stopped_at_step: int | None,
                          stop_rule: str, args: PBUConfig) -> str:
    """What happened and the flag to change: the step budget ran out (raise `--max_steps`), or the objective settled
    with the class still recognised (raise `--alpha`). (A non-finite loss is an error of its own, `hf_pbu.failures`.)"""
    what = (f"Not forgotten: the forget-train accuracy is {forget_train_accuracy:.2f}% after {steps} optimizer steps, "
            f"above stop_forget_accuracy={args.stop_forget_accuracy:g}%.")
    if stopped_at_step is None:
        fix = (f"the step budget ({budget} steps) ran out first; rerun with --max_steps {2 * max(budget, 1)} "
               "(or more --num_train_epochs).")
    elif stop_rule == "plateau":
        fix = (f"the objective stopped falling with the class still recognised; raise --alpha (the forget term's "
               f"weight, now {args.alpha:g}) and rerun.")
    else:
        fix = f"raise --alpha (now {args.alpha:g}) or --learning_rate (now {args.learning_rate:g}) and rerun."
    return f"{what} The run ended because {fix}"
