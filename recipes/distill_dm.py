"""DM (+ class-aware CMI) distillation.

    accelerate launch recipes/distill_dm.py                                   # mnist-5k default, CPU, offline
    accelerate launch recipes/distill_dm.py --config recipes/configs/dm_cmi/cifar10_ipc10.yaml
    accelerate launch recipes/distill_dm.py --config ... --ipc 50 --cmi_weight 2000   # CLI overrides YAML

Arguments: ``python recipes/distill_dm.py --help`` (cmidd_hf.cli.arguments and cmidd_hf.methods.DMConfig).
"""

import sys
from pathlib import Path

from cmidd_hf.cli.runner import main_entry

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "dm_cmi" / "mnist-5k_ipc10.yaml"

if __name__ == "__main__":
    sys.exit(main_entry(sys.argv[1:], DEFAULT_CONFIG, method="dm"))
