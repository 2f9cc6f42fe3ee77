"""``evaluate`` metric modules shipped inside the package; they load offline from their folder:

    import evaluate, cmidd_hf
    cmi = evaluate.load(cmidd_hf.CLASS_AWARE_CMI)
"""

from pathlib import Path

CLASS_AWARE_CMI = str(Path(__file__).parent / "class_aware_cmi")
