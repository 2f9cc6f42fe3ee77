"""DSA (+ class-aware CMI) distillation: gradient matching with differentiable siamese augmentation.

    accelerate launch recipes/distill_dsa.py                                  # mnist-5k default, CPU, offline
    accelerate launch recipes/distill_dsa.py --config recipes/configs/dsa_cmi/cifar10_ipc10.yaml
    accelerate launch recipes/distill_dsa.py --config ... --ipc 50 --cmi_weight 10000

Arguments: ``python recipes/distill_dsa.py --help`` (cmidd_hf.cli.arguments and cmidd_hf.methods.DSAConfig).
"""

import sys
from pathlib import Path

from cmidd_hf.cli.runner import main_entry

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "dsa_cmi" / "mnist-5k_ipc10.yaml"

if __name__ == "__main__":
    sys.exit(main_entry(sys.argv[1:], DEFAULT_CONFIG, method="dsa"))
