"""The main job, for `accelerate launch scripts/unlearn.py ...`: the same command as `hf-pbu unlearn ...`
(`hf_pbu/cli/unlearn.py`), with the same arguments (`--help` lists them)."""

from hf_pbu.cli.unlearn import main

if __name__ == "__main__":
    main()
