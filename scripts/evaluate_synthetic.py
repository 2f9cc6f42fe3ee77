"""Evaluate any distilled set: train fresh networks on it and test them on the real test split.

    python scripts/evaluate_synthetic.py outputs/mnist-5k-dm-cmi-ipc10 --arch convnet3 alexnet_cifar \\
        vgg11_cifar resnet18_cifar --protocol dsa --runs 5 --update-card
    python scripts/evaluate_synthetic.py your-org/cifar10-dm-cmi-ipc10 --arch convnet3 --update-card --push
    python scripts/evaluate_synthetic.py res_DM_CIFAR10_ConvNet_10ipc.pt --normalized --dataset uoft-cs/cifar10
    python scripts/evaluate_synthetic.py images_best.pt --labels labels_best.pt --normalized --dataset uoft-cs/cifar10
    python scripts/evaluate_synthetic.py data.pt --pixels --factor 2 --dataset uoft-cs/cifar10 --protocol idc
    python scripts/evaluate_synthetic.py syn_data/ --dataset uoft-cs/cifar10 --save outputs/imported

SOURCE is a folder written by cmidd-hf (or any Hub-layout image dataset), a Hub dataset repo id, a ``.pt`` file
of the DC/DSA/DM, IDC or MTT repos (say whether its tensors are ``--normalized`` or ``--pixels`` in [0, 1]), or
an image folder with one sub-folder per class (SRe2L / DD-Ranking style). ``--dd_ranking`` (with ``--protocol
kd``) adds DD-Ranking's IOR and HLR (:mod:`cmidd_hf.evaluation.dd_ranking`). ``--update-card`` records the results
in the set's card (a folder is rewritten in place; a repo is re-pushed with ``--push``); ``--save DIR`` writes an
imported set, with its results, as a Hub-layout folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
from huggingface_hub.errors import HfHubHTTPError

from cmidd_hf import evaluate_random_subset, evaluate_synthetic, evaluate_whole_dataset, load_image_classification
from cmidd_hf.artifacts.resolver import ArtifactError, parse_spec
from cmidd_hf.cli.arguments import add_streaming_arguments, check_can_push
from cmidd_hf.data.augment import default_augmentation
from cmidd_hf.data.errors import DataError
from cmidd_hf.engine.errors import ConfigError
from cmidd_hf.engine.precision import PRECISIONS
from cmidd_hf.evaluation.dd_ranking import DDRankingScores, dd_ranking_scores
from cmidd_hf.evaluation.protocols import PROTOCOLS, get_protocol
from cmidd_hf.hub.interop import load_imagefolder, load_pt
from cmidd_hf.hub.synthetic_set import SyntheticSet, load_synthetic


def source_kind(source: str) -> str:
    path = Path(source)
    if path.is_file():
        if path.suffix not in (".pt", ".pth"):
            raise DataError(f"{source}: a file must be a .pt/.pth tensor file")
        return "pt"
    if path.is_dir():
        return "folder" if (path / "README.md").is_file() or any(path.glob("*/*.parquet")) else "imagefolder"
    if source.count("/") == 1 and not source.startswith((".", "/")):
        return "repo"
    raise DataError(f"SOURCE={source!r} is not a file, a folder or a Hub repo id 'org/name'")


def load_source(args, kind: str) -> tuple[SyntheticSet, object]:
    """The set and the real dataset it is evaluated against (checked to match)."""
    if kind in ("folder", "repo"):
        synthetic = load_synthetic(args.source, config=args.config)
        dataset = args.dataset or synthetic.source
        if dataset is None:
            raise DataError(f"{args.source} does not name its source dataset; pass --dataset")
        data = load_image_classification(dataset, config_name=args.dataset_config, image_size=args.image_size,
                                         in_memory=args.in_memory, num_workers=args.num_workers)
    else:
        if args.dataset is None:
            raise DataError(f"--dataset is needed to evaluate a {kind} source (the real data it was distilled from)")
        data = load_image_classification(args.dataset, config_name=args.dataset_config, image_size=args.image_size,
                                         in_memory=args.in_memory, num_workers=args.num_workers)
        common = dict(class_names=data.class_names, mean=data.mean, std=data.std, source=args.dataset)
        if kind == "pt":
            normalized = True if args.normalized else (False if args.pixels else None)
            synthetic = load_pt(args.source, normalized=normalized, labels_path=args.labels,
                                experiment=args.experiment, factor=args.factor, **common)
        else:
            synthetic = load_imagefolder(args.source, **common)
    if synthetic.num_classes != data.num_classes or synthetic.image_shape != data.image_shape:
        raise DataError(f"the set has {synthetic.num_classes} classes of {synthetic.image_shape} images but "
                        f"{data.name} has {data.num_classes} of {data.image_shape}; pass the right --dataset")
    return synthetic, data


def resolve_teacher(args, synthetic, data):
    """The kd teacher: ``--teacher``, else the one the set's card records (its folder or Hub name)."""

    from cmidd_hf.artifacts.proxies import ProxyPool

    spec = args.teacher or ((synthetic.distillation.get("evaluation") or {}).get("teacher") or {}).get("name")
    if not spec:
        raise ConfigError(f"--protocol {args.protocol} trains against a teacher and the set's card records none; "
                          "pass --teacher (a timm name, hf-hub:, local-dir: or '{train: {...}}')")
    return ProxyPool.from_pretrained([parse_spec("--teacher", spec)], data, cache_dir=args.teacher_cache_dir,
                                     dataset_id=data.name)[0]


def check_dd_ranking_arguments(args) -> None:
    """Refuse a DD-Ranking request that could not be computed fairly, before any training."""
    if not get_protocol(args.protocol).requires_teacher:
        raise ConfigError(f"--dd_ranking: IOR compares the set and a random real subset under the same relabelling; "
                          f"--protocol {args.protocol} uses the stored labels: use --protocol kd (or kd_imagenet)")
    if get_protocol(args.hard_protocol).requires_teacher:
        raise ConfigError(f"--hard_protocol {args.hard_protocol} relabels with a teacher; HLR needs a hard-label "
                          "protocol (dsa, dc, idc, mtt)")
    if args.full_runs < 1 or (args.full_epochs is not None and args.full_epochs < 1):
        raise ConfigError(f"--full_runs={args.full_runs} / --full_epochs={args.full_epochs}: both must be >= 1")
    if args.full_accuracy is not None and not (0 <= args.full_accuracy <= 100 and args.full_source):
        raise ConfigError(f"--full_accuracy={args.full_accuracy}: give a percentage in 0..100 and say where it was "
                          "measured with --full_source")


def dd_ranking(args, train_set: SyntheticSet, data, results: list, baselines: list,
               options: dict) -> list[DDRankingScores]:
    """DD-Ranking's IOR (from the kd results and baselines) and HLR (two hard-label evaluations) per architecture."""
    hard = get_protocol(args.hard_protocol)
    hard_options = dict(options, protocol=hard, teacher=None, augmentation=default_augmentation(
        data.name, hard.augmentation) if hard.augmentation and args.hard_protocol != "idc" else None)
    scores = []
    for result, baseline in zip(results, baselines, strict=True):
        on_set = evaluate_synthetic(train_set.images, train_set.hard_labels, data.test, arch=result.arch,
                                    **hard_options)
        if args.full_accuracy is not None:
            full, source = args.full_accuracy / 100, args.full_source
        else:
            full = evaluate_whole_dataset(data, arch=result.arch, **dict(hard_options, runs=args.full_runs,
                                                                          epochs=args.full_epochs))
            source = None
        scores.append(dd_ranking_scores(result, baseline, on_set, full, source))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="folder, Hub repo id, .pt file or image folder")
    parser.add_argument("--config", default=None, help="dataset config of a folder/repo with several (e.g. ipc50)")
    parser.add_argument("--dataset", default=None, help="real dataset (default: the card's source dataset)")
    parser.add_argument("--dataset_config", default=None)
    add_streaming_arguments(parser)
    parser.add_argument("--arch", nargs="+", default=["convnet3"])
    parser.add_argument("--protocol", default="dsa", choices=sorted(PROTOCOLS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", action="store_true", help="also random real subsets of the same IPC")
    parser.add_argument("--teacher", default=None, help="teacher of a kd protocol: a timm name, hf-hub:, local-dir: "
                                                        "or '{train: {...}}' (default: the one the card records)")
    parser.add_argument("--teacher_cache_dir", default="outputs/proxy-cache", help="where a train: teacher goes")
    ranking = parser.add_argument_group("DD-Ranking scores (with a kd --protocol)")
    ranking.add_argument("--dd_ranking", action="store_true", help="also report IOR (set vs random real subset, "
                         "both relabelled by the teacher) and HLR (whole training set vs set, hard labels)")
    ranking.add_argument("--hard_protocol", default="dsa", choices=sorted(PROTOCOLS), help="HLR's hard-label protocol")
    ranking.add_argument("--full_runs", type=int, default=1, help="networks trained on the whole training set")
    ranking.add_argument("--full_epochs", type=int, default=None, help="their epochs (default: the protocol's)")
    ranking.add_argument("--full_accuracy", type=float, default=None, help="instead, a whole-set accuracy in %% "
                         "measured elsewhere under --hard_protocol; requires --full_source")
    ranking.add_argument("--full_source", default=None, help="where --full_accuracy comes from (command, CPU kind)")
    space = parser.add_mutually_exclusive_group()
    space.add_argument("--normalized", action="store_true", help=".pt tensors are normalized (research repos)")
    space.add_argument("--pixels", action="store_true", help=".pt tensors are [0, 1] pixels")
    parser.add_argument("--labels", default=None, help=".pt file of labels (MTT's labels_best.pt)")
    parser.add_argument("--experiment", type=int, default=-1, help="which experiment of a DC/DM 'data' list")
    parser.add_argument("--factor", type=int, default=1, help="IDC data.pt: its multi-formation factor (-f); the "
                                                              "stored images are decoded into factor² each")
    parser.add_argument("--update-card", dest="update_card", action="store_true",
                        help="record the results in the set's card")
    parser.add_argument("--push", action="store_true", help="with --update-card on a repo: re-push it")
    parser.add_argument("--save", type=Path, default=None, help="write the set (with results) as a Hub-layout folder")
    parser.add_argument("--no_compile", action="store_true", help="skip torch.compile (no warm-up)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 where the device has native bf16, else fp32")
    args = parser.parse_args(argv)
    try:
        kind = source_kind(args.source)
        if args.update_card and kind in ("pt", "imagefolder"):
            raise ConfigError(f"--update-card: a {kind} source has no card; use --save DIR to write one")
        if args.update_card and kind == "repo" and not args.push:
            raise ConfigError("--update-card on a Hub repo re-pushes it: add --push (or --save DIR for a local copy)")
        if args.push:
            if kind != "repo":
                raise ConfigError("--push applies to a Hub repo source; push folders with scripts/push_to_hub.py")
            check_can_push(args.source)
        if args.runs < 1 or (args.epochs is not None and args.epochs < 1):
            raise ConfigError(f"--runs={args.runs} / --epochs={args.epochs}: both must be >= 1")
        if args.dd_ranking:
            check_dd_ranking_arguments(args)
        unknown = [arch for arch in args.arch if not timm.is_model(arch)]
        if unknown:
            raise ConfigError(f"--arch: unknown architecture(s) {unknown}; use cmidd_hf's (convnet3, alexnet_cifar, "
                              "vgg11_cifar, resnet18_cifar, ...) or any timm model")
        synthetic, data = load_source(args, kind)
        if args.dd_ranking and synthetic.ipc is None:
            raise ConfigError("--dd_ranking: the set has unequal images per class, so no random real subset of the "
                              "same IPC can be drawn for IOR")
    except (ConfigError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    protocol = get_protocol(args.protocol)
    augmentation = default_augmentation(data.name, protocol.augmentation) \
        if protocol.augmentation and args.protocol != "idc" else None
    teacher = None
    if protocol.requires_teacher:
        try:
            teacher = resolve_teacher(args, synthetic, data)
        except (ConfigError, ArtifactError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    overrides = (synthetic.distillation.get("evaluation") or {}).get("overrides") or {}
    if overrides:  # what the method learned (MTT: the step size) replaces the protocol's setting
        print("replaying the set's evaluation settings: "
              + ", ".join(f"{k} {v:.6g} (learned by the method)" for k, v in overrides.items()))
    options = dict(protocol=get_protocol(args.protocol, **overrides), runs=args.runs, seed=args.seed,
                   epochs=args.epochs, augmentation=augmentation, precision=args.precision,
                   compile=not args.no_compile, teacher=teacher)
    if synthetic.transform is not None:  # the set lives in its experts' ZCA space: so must the test data
        data = data.with_transform(synthetic.transform)
        print(f"test data ZCA-whitened with the set's transform (sha256 {synthetic.transform.sha256[:12]})")
    # train in the evaluation data's normalization; the set itself (saved with --update-card) stays exact
    train_set = synthetic if (synthetic.mean, synthetic.std) == (data.mean, data.std) else \
        synthetic.renormalized(data.mean, data.std)
    results = [evaluate_synthetic(train_set.images, train_set.labels, data.test, arch=arch, **options)
               for arch in args.arch]
    baselines = []
    if args.baseline or args.dd_ranking:
        if synthetic.ipc is None:
            print("no baseline: the set has unequal images per class", file=sys.stderr)
        else:
            baselines = [evaluate_random_subset(data, synthetic.ipc, arch=arch, **options) for arch in args.arch]
    print(f"\n{args.source} ({len(synthetic.labels)} images, {synthetic.num_classes} classes) on {data.name} test:")
    print(f"{'set':<12} {'architecture':<16} {'protocol':<9} {'epochs':>6} {'runs':>4}  accuracy (%)    per run (%)")
    for name, rows in (("distilled", results), (f"random ipc{synthetic.ipc}", baselines)):
        for r in rows:
            per_run = ", ".join(f"{100 * a:.1f}" for a in r.accuracies)
            print(f"{name:<12} {r.arch:<16} {r.protocol:<9} {r.epochs:>6} {r.runs:>4}  "
                  f"{100 * r.mean:6.2f} ± {100 * r.std:4.2f}   [{per_run}]")

    synthetic.record_results(results)
    if baselines:
        synthetic.record_results(baselines, kind="baselines")
    if args.dd_ranking and baselines:
        scores = dd_ranking(args, train_set, data, results, baselines, options)
        print("\nDD-Ranking:")
        for score in scores:
            print(f"  {score}")
        synthetic.record_dd_ranking(scores)
    if args.update_card and kind == "folder":
        synthetic.save(args.source)
        print(f"updated the card of {args.source}")
    if args.update_card and kind == "repo":
        try:
            commit = synthetic.push_to_hub(args.source, commit_message="Update results (scripts/evaluate_synthetic.py)")
        except (HfHubHTTPError, OSError) as err:
            print(f"error: pushing to {args.source} failed ({type(err).__name__}: {err}); the results above are "
                  "not recorded", file=sys.stderr)
            return 1
        print(f"pushed the updated card: {commit.commit_url}")
    if args.save is not None:
        synthetic.save(args.save)
        print(f"wrote {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
