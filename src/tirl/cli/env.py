"""`tirl env`: versions, devices, and whether the embedded model and shared data are available."""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tirl env", description="Print versions, devices and data/model availability.")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)

    import torch

    from tirl.data import local_data_dir
    from tirl.hardware import cpu_info, fast_bf16
    from tirl.jobs.runinfo import git_commit, versions
    from tirl.models import ModelNotAvailableError, cache_dir, smollm2_gguf_path

    cpu = cpu_info()
    try:
        gguf = str(smollm2_gguf_path())
    except ModelNotAvailableError as e:
        gguf = f"missing ({e})"
    info = {
        "versions": versions(),
        "git_commit": git_commit(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "cpu_capability": cpu["capability"],
        "cpu_native_bf16": cpu["native_bf16"],
        # what an unset --bf16 becomes in `tirl train` / `tirl eval` on this machine (tirl.hardware)
        "default_bf16": fast_bf16(),
        "smollm2_gguf": gguf,
        "model_cache": str(cache_dir()),
        "shared_data": str(local_data_dir()),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            if isinstance(v, dict):
                print(f"{k}:")
                for kk, vv in v.items():
                    print(f"  {kk}: {vv}")
            else:
                print(f"{k}: {v}")
    return 0
