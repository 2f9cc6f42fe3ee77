"""MTT (+ class-aware CMI): trajectory matching against expert trajectories.

    accelerate launch recipes/distill_mtt.py                                   # mnist-5k default, CPU, offline
    accelerate launch recipes/distill_mtt.py --config recipes/configs/mtt_cmi/cifar10_ipc10.yaml
    accelerate launch recipes/distill_mtt.py --config ... --experts hf-hub:org/cifar10-convnet3-experts  # CLI wins

Arguments: ``python recipes/distill_mtt.py --help`` (cmidd_hf.cli.arguments and cmidd_hf.methods.MTTConfig).
"""

import sys
from pathlib import Path

from cmidd_hf.cli.runner import main_entry

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "mtt_cmi" / "mnist-5k_ipc10.yaml"

if __name__ == "__main__":
    sys.exit(main_entry(sys.argv[1:], DEFAULT_CONFIG, method="mtt"))
