"""The `hf-pbu` console command: `hf-pbu unlearn ...` runs the main job (`hf_pbu/cli/unlearn.py`).

Under several processes, launch it as `accelerate launch scripts/unlearn.py ...` or `accelerate launch -m hf_pbu.cli
unlearn ...`.
"""

import sys

from . import unlearn

COMMANDS = {"unlearn": unlearn.main}
USAGE = (
    "usage: hf-pbu <command> [<args>]\n\n"
    "commands:\n"
    "  unlearn    forget classes of an image classifier with PBU (`hf-pbu unlearn --help` lists its arguments)\n"
)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise SystemExit(f"hf-pbu: unknown command {command!r}.\n{USAGE}")
    sys.argv = [f"hf-pbu {command}", *rest]  # so that --help shows the command's own name
    COMMANDS[command](rest)


if __name__ == "__main__":
    main()
