"""SRe2L (+ class-aware CMI): recover images from a BatchNorm teacher, block by block, evaluated with kd.

    accelerate launch recipes/distill_sre2l.py                                 # mnist-5k default, CPU, offline
    accelerate launch recipes/distill_sre2l.py --config recipes/configs/sre2l_cmi/fashion-mnist_ipc10.yaml
    accelerate launch recipes/distill_sre2l.py --config recipes/configs/sre2l_cmi/imagenet-1k_ipc10.yaml

Arguments: ``python recipes/distill_sre2l.py --help`` (cmidd_hf.cli.arguments and cmidd_hf.methods.SRe2LConfig).
"""

import sys
from pathlib import Path

from cmidd_hf.cli.runner import main_entry

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "sre2l_cmi" / "mnist-5k_ipc10.yaml"

if __name__ == "__main__":
    sys.exit(main_entry(sys.argv[1:], DEFAULT_CONFIG, method="sre2l"))
