"""Every script's `--help` exits 0 and lists every flag its parser accepts (argparse formats help strings with `%`,
so one bare `%` in a field's help used to crash it)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Scripts only: the benchmark's helper modules beside them (offline data, base models, cells) have no command line.
SCRIPTS = sorted(path for path in [*ROOT.glob("scripts/*.py"), *ROOT.glob("benchmarks/*.py")]
                 if '__name__ == "__main__"' in path.read_text())
MARKER = "---flags---"

# Runs the script with `--help` as a user would; argparse's own help action prints the help, and the wrapper then
# prints the parser's long options after a marker (so no script needs to expose its parser).
PROBE = f"""
import argparse, os, runpy, sys
print_help = argparse.ArgumentParser.print_help
def print_help_and_flags(self, file=None):
    print_help(self, file)
    print({MARKER!r})
    print("\\n".join(o for a in self._actions for o in a.option_strings if o.startswith("--")))
argparse.ArgumentParser.print_help = print_help_and_flags
sys.argv = [sys.argv[1], "--help"]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))  # as `python <script>` does: its sibling modules
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_help_exits_0_and_lists_every_flag(script: Path):
    run = subprocess.run([sys.executable, "-c", PROBE, str(script)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env={"COLUMNS": "200", "PATH": ""})
    assert run.returncode == 0, run.stderr[-2000:]
    assert MARKER in run.stdout, "the script printed no help"
    help_text, flags = run.stdout.split(MARKER)
    assert flags.split(), f"{script.name} has no flags"
    missing = [flag for flag in flags.split() if flag not in help_text]
    assert not missing, f"{script.name} --help does not list {missing[:10]}"
