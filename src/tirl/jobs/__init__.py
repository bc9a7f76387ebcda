"""Whole jobs, each a function of its settings that the `tirl` command parses into (one module per command):

    train     `tirl train`: model + data + trainer + run directory (run.json, metrics, curves, summary)
    eval      `tirl eval`: greedy and sampled generations, scores, resumable files
    analyse   `tirl rewards analyse`: rewards of several models against task scores and preference pairs
    rundir    the guards of an output directory: reuse, --resume/--overwrite, links, failed runs, full disks
    runinfo   what a run records about itself: config, versions, git commit, data checksums

Jobs use the layers below them (`trainers`, `evaluation`, `rewards`, `data`, `models`); only `tirl.cli` uses jobs.
Modules load on first use, so `tirl --help` stays fast.
"""
