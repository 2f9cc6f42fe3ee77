"""IDC (+ class-aware CMI) distillation on a multi-formation set.

    accelerate launch recipes/distill_idc.py                                  # mnist-5k default, CPU, offline
    accelerate launch recipes/distill_idc.py --config recipes/configs/idc_cmi/cifar10_ipc10.yaml
    accelerate launch recipes/distill_idc.py --config ... --ipc 50 --cmi_weight 50

Arguments: ``python recipes/distill_idc.py --help`` (cmidd_hf.cli.arguments and cmidd_hf.methods.IDCConfig).
"""

import sys
from pathlib import Path

from cmidd_hf.cli.runner import main_entry

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "idc_cmi" / "mnist-5k_ipc10.yaml"

if __name__ == "__main__":
    sys.exit(main_entry(sys.argv[1:], DEFAULT_CONFIG, method="idc"))
