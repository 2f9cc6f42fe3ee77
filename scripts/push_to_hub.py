"""Push a distilled set (a run's output folder, or any folder written by ``SyntheticSet.save``) to the Hub.

    python scripts/push_to_hub.py outputs/mnist-5k-dm-cmi-ipc10 your-org/mnist-5k-dm-cmi-ipc10
    python scripts/push_to_hub.py outputs/cifar10-dm-cmi-ipc50 your-org/cifar10-dm-cmi --as_config ipc50

One ``create_repo`` (dataset, exist_ok) and one commit holding the set's data, its card (merged with the repo's
card: configs pushed before stay), the image grid and the run's curves/config/metrics; never checkpoints. The
token comes from HF_TOKEN or `hf auth login` only.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from huggingface_hub.errors import HfHubHTTPError

from cmidd_hf.cli.arguments import check_can_push
from cmidd_hf.data.errors import DataError
from cmidd_hf.engine.errors import ConfigError
from cmidd_hf.engine.run_folder import RunFolder
from cmidd_hf.hub.synthetic_set import load_synthetic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the distilled set's folder (a run's output_dir/run_name)")
    parser.add_argument("repo_id", help="the Hub dataset repo, org/name (created if needed)")
    parser.add_argument("--config", default=None, help="which config of the folder to push (default: its default)")
    parser.add_argument("--as_config", default=None, help="push it under this config name (e.g. ipc50)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--message", default=None, help="commit message")
    args = parser.parse_args(argv)
    try:
        if not args.folder.is_dir():
            raise DataError(f"folder={str(args.folder)!r} does not exist")
        check_can_push(args.repo_id)
        synthetic = load_synthetic(args.folder, config=args.config)
        if args.as_config:
            synthetic = replace(synthetic, config_name=args.as_config)
    except (ConfigError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        commit = synthetic.push_to_hub(args.repo_id, private=args.private, commit_message=args.message,
                                       extra_files=RunFolder(args.folder).published_files())
    except (HfHubHTTPError, OSError) as err:
        print(f"error: pushing to {args.repo_id} failed ({type(err).__name__}: {err})", file=sys.stderr)
        return 1
    print(f"pushed {args.folder} as config {synthetic.config_name!r}: {commit.commit_url}")
    print(f'load it with: cmidd_hf.load_synthetic("{args.repo_id}") or datasets.load_dataset("{args.repo_id}")')
    return 0


if __name__ == "__main__":
    sys.exit(main())
