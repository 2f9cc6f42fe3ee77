"""timm pretrained-config defaults for the architectures registered here."""

from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


def default_cfgs_for(variants, first_conv: str, classifier: str):
    """One untrained 32x32 CIFAR-normalized default cfg per variant (no weights to download)."""
    return generate_default_cfgs(
        {
            f"{name}.untrained": {
                "url": "",
                "num_classes": 10,
                "input_size": (3, 32, 32),
                "pool_size": None,
                "crop_pct": 1.0,
                "interpolation": "bilinear",
                "mean": CIFAR10_MEAN,
                "std": CIFAR10_STD,
                "first_conv": first_conv,
                "classifier": classifier,
                "license": "mit",
            }
            for name in variants
        }
    )


def register_variants(module_name: str, variants: dict) -> None:
    """Register ``{name: (model_class, default_kwargs)}`` with timm as factories living in ``module_name``.

    The module must define ``default_cfgs`` (see :func:`default_cfgs_for`) before this is called.
    """
    for variant, (cls, defaults) in variants.items():

        def factory(pretrained: bool = False, _variant=variant, _cls=cls, _defaults=defaults, **kwargs):
            return build_model_with_cfg(_cls, _variant, pretrained, **{**_defaults, **kwargs})

        factory.__name__ = variant
        factory.__qualname__ = variant
        factory.__doc__ = f"{cls.__name__} with {defaults} (any constructor argument can be overridden)."
        factory.__module__ = module_name
        register_model(factory)
