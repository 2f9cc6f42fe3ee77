"""End-to-end distillation run behind ``recipes/distill_dm.py``: checks, data, proxies, distill, evaluate, write."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from . import __version__
from .cmi import CMIRegularizer, dataset_cmi
from .config import ConfigError, to_yaml
from .data import ImageClassificationData, load_image_classification
from .distill import Distiller, SyntheticImages, check_compatible, find_checkpoint
from .evaluation import default_augmentation, evaluate_random_subset, evaluate_synthetic
from .hub import SyntheticSet, run_files
from .methods.dm import DMObjective
from .outputs import plot_curves
from .proxies import ProxyPool
from .recipes import DistillArguments, validate

logger = logging.getLogger(__name__)


def fingerprint(args: DistillArguments, data: ImageClassificationData) -> dict:
    """What a checkpoint must share with the run resuming it."""
    return {"dataset": args.dataset, "ipc": args.ipc, "image_shape": list(data.image_shape),
            "num_classes": data.num_classes, "method": args.method, "net_arch": args.net_arch,
            "init": args.init, "seed": args.seed}


def set_cmi(pool: ProxyPool, images: torch.Tensor, labels: torch.Tensor, space: str, num_classes: int) -> float:
    """Mean over the proxies of the class-aware CMI of the set (``dataset_cmi``, also behind the metric)."""
    values = dataset_cmi(images, labels, list(pool), space=space, num_classes=num_classes)
    return sum(values) / len(values)


def run_distillation(args: DistillArguments) -> dict:
    """Run one distillation; returns the final evaluation summary. Raises ConfigError & co. on bad input."""
    validate(args)
    run_dir = args.run_dir
    accelerator = Accelerator(
        cpu=args.cpu,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    device = accelerator.device
    if device.type == "cpu":  # `accelerate launch` sets OMP_NUM_THREADS=1; share the cores between processes
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    accelerator.print(f"accelerate: {accelerator.num_processes} process(es), {accelerator.distributed_type.value}, "
                      f"device {device}, {torch.get_num_threads()} threads per process")
    data = load_image_classification(
        args.dataset, config_name=args.dataset_config, image_column=args.image_column,
        label_column=args.label_column, train_split=args.train_split, test_split=args.test_split, seed=args.seed)
    smallest = min(data.train.class_count(c) for c in range(data.num_classes))
    if args.ipc > smallest:
        raise ConfigError(f"ipc={args.ipc} exceeds the {smallest} training images of the smallest class of "
                          f"{data.name}; choose ipc <= {smallest}")
    if args.batch_real > smallest:
        raise ConfigError(f"batch_real={args.batch_real} exceeds the {smallest} training images of the smallest "
                          f"class of {data.name}; choose batch_real <= {smallest}")
    identity = fingerprint(args, data)
    if args.resume_from_checkpoint:  # refuse an incompatible resume before any long work
        checkpoint = find_checkpoint(run_dir, args.resume_from_checkpoint)
        check_compatible(json.loads((checkpoint / "distill_state.json").read_text())["fingerprint"], identity)

    strategy = default_augmentation(data.name) if args.dsa_strategy == "auto" else args.dsa_strategy
    strategy = None if strategy == "none" else strategy
    pool = None
    if args.proxies:
        with accelerator.main_process_first():  # train:-specs are trained once, by the main process
            pool = ProxyPool.from_pretrained(args.proxies, data, cache_dir=args.proxy_cache_dir,
                                             dataset_id=args.dataset, progress=accelerator.is_main_process)
        pool.to(device)
    regularizer = None
    if args.cmi_weight > 0:
        regularizer = CMIRegularizer(list(pool), args.cmi_weight, space=args.cmi_space,
                                     normalization=args.cmi_normalization, every=args.cmi_every,
                                     class_chunk_size=args.cmi_class_chunk, seed=args.seed,
                                     precision=args.cmi_precision)
    objective = DMObjective(data.train, args.net_arch, args.batch_real, strategy, args.seed, args.precision,
                            args.compile, device)
    init = SyntheticImages.from_real if args.init == "real" else SyntheticImages.from_noise
    synthetic = init(data.train, args.ipc, args.seed)

    eval_options = dict(protocol=args.eval_protocol, seed=args.seed, epochs=args.eval_epochs,
                        augmentation=strategy if args.eval_protocol != "idc" else None, precision=args.precision,
                        compile=args.compile, device=device)

    def periodic_evaluation(images, labels, step) -> dict:
        record = {}
        for arch in args.eval_archs:
            result = evaluate_synthetic(images, labels, data.test, arch=arch, runs=args.eval_every_runs,
                                        progress=False, **eval_options)
            record[f"accuracy/{arch}"] = result.mean
        if pool is not None:
            record["set_cmi"] = set_cmi(pool, images, labels, args.cmi_space, data.num_classes)
        accelerator.print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items()))
        return record

    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(args))
    accelerator.init_trackers(args.resolved_run_name, config={k: v for k, v in asdict(args).items()
                                                              if isinstance(v, (int, float, str, bool))})
    distiller = Distiller(accelerator, synthetic, objective, regularizer, args.iterations, args.lr_img,
                          args.momentum_img, run_dir, identity, checkpoint_every=args.checkpoint_every,
                          eval_every=args.eval_every, evaluate=periodic_evaluation, log_every=args.log_every,
                          evaluate_at_start=args.eval_at_start)
    synthetic = distiller.run(args.resume_from_checkpoint)
    images, labels = synthetic.images.detach().cpu(), synthetic.labels.cpu()

    summary: dict = {}
    if accelerator.is_main_process:
        results = []
        for arch in args.eval_archs:
            result = evaluate_synthetic(images, labels, data.test, arch=arch, runs=args.eval_runs, **eval_options)
            accelerator.print(f"final accuracy {result}")
            results.append(result.to_dict())
        baselines = []
        if args.eval_baseline:
            for arch in args.eval_archs:
                baselines.append(evaluate_random_subset(data, args.ipc, arch=arch, runs=args.eval_runs,
                                                        **eval_options))
                accelerator.print(f"baseline (random real ipc {args.ipc}) {baselines[-1]}")
        cmi = set_cmi(pool, images, labels, args.cmi_space, data.num_classes) if pool is not None else None
        distiller.log_record({"step": args.iterations, "event": "evaluation", "final": True,
                        **{f"accuracy/{r['arch']}": r["mean"] for r in results},
                        **({"final_cmi": cmi} if cmi is not None else {})})
        distillation = {
            "method": args.method,
            "regularizer": None if regularizer is None else {
                "name": "class_aware_cmi", "weight": args.cmi_weight, "space": args.cmi_space,
                "normalization": args.cmi_normalization, "every": args.cmi_every,
                "proxies": pool.provenance},
            "ipc": args.ipc, "iterations": args.iterations, "seed": args.seed, "init": args.init,
            "lr_img": args.lr_img, "momentum_img": args.momentum_img, "batch_real": args.batch_real,
            "net_arch": args.net_arch, "dsa_strategy": strategy,
            "image_size": list(data.image_shape),
            "normalization": {"mean": list(data.mean), "std": list(data.std)},
            "final_cmi": cmi,
            "library": f"cmidd-hf {__version__}",
            "results": results,
        }
        synthetic_set = SyntheticSet(images, labels, data.class_names, data.mean, data.std, distillation,
                                     source=args.dataset, license=data.license, config_name=args.hub_config)
        if baselines:
            synthetic_set.record_results(baselines, kind="baselines")
        plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
        synthetic_set.save(run_dir)
        summary = {"run_dir": str(run_dir), "results": results, "final_cmi": cmi}
        accelerator.print(f"wrote {run_dir}")
        if args.push_to_hub:
            commit = synthetic_set.push_to_hub(args.push_to_hub, private=args.hub_private,
                                               extra_files=run_files(run_dir))
            accelerator.print(f"pushed to {getattr(commit, 'commit_url', args.push_to_hub)}")
            summary["commit"] = getattr(commit, "oid", None)
    accelerator.end_training()
    return summary


def main_entry(argv, default_config: str | Path | None) -> int:
    """CLI wrapper: bad input -> one line on stderr and exit code 2; interruption -> 130."""
    import sys

    from .config import parse_args
    from .data import DataError
    from .distill import NonFiniteLossError, ResumeError
    from .proxies import ProxyError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("cmidd_hf").setLevel(logging.INFO)
    try:
        args = parse_args(argv, DistillArguments, default_config)
        run_distillation(args)
    except (ConfigError, DataError, ProxyError, ResumeError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return 130
    return 0
