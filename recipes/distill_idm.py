"""IDM (+ class-aware CMI) distillation on a multi-formation set.

    accelerate launch recipes/distill_idm.py                                  # mnist-5k default, CPU, offline
    accelerate launch recipes/distill_idm.py --config recipes/configs/idm_cmi/cifar10_ipc10.yaml
    accelerate launch recipes/distill_idm.py --config ... --ipc 50 --ce_weight 0.1

Arguments: ``python recipes/distill_idm.py --help`` (cmidd_hf.cli.arguments and cmidd_hf.methods.IDMConfig).
"""

import sys
from pathlib import Path

from cmidd_hf.cli.runner import main_entry

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "idm_cmi" / "mnist-5k_ipc10.yaml"

if __name__ == "__main__":
    sys.exit(main_entry(sys.argv[1:], DEFAULT_CONFIG, method="idm"))
