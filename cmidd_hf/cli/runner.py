"""End-to-end distillation run behind ``recipes/distill_<method>.py``: checks, data, method, proxies, distill,
evaluate (runs split over processes), write. Method-agnostic: the method comes from the registry."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object

from .. import __version__
from ..artifacts.proxies import ProxyPool
from ..cmi.class_aware import CMIRegularizer, dataset_cmi
from ..data.augment import default_augmentation
from ..data.loading import ImageClassificationData, load_image_classification
from ..engine.blocks import BLOCKS_DIR, Block, BlockwiseDistiller
from ..engine.distill import Distiller, check_compatible, find_checkpoint
from ..engine.errors import ConfigError
from ..engine.method import MethodArtifacts
from ..engine.run_folder import STATE_FILE, RunFolder
from ..evaluation.evaluate import EvaluationResult, evaluate_random_subset, evaluate_synthetic
from ..evaluation.protocols import get_protocol
from ..hub.figures import plot_curves
from ..hub.synthetic_set import SyntheticSet
from ..methods import DistillationMethod, MethodConfigError, MethodContext, get_method
from .arguments import DistillRecipe, parse_recipe, validate
from .config import to_yaml

logger = logging.getLogger(__name__)


def fingerprint(recipe: DistillRecipe, data: ImageClassificationData) -> dict:
    """What a checkpoint must share with the run resuming it."""
    return {"dataset": recipe.data.dataset, "ipc": recipe.synthetic.ipc, "image_shape": list(data.image_shape),
            "num_classes": data.num_classes, "method": recipe.run.method, "seed": recipe.run.seed,
            "validation_per_class": recipe.data.validation_per_class,
            **recipe.method.identity()}


def proxy_identity(pool: ProxyPool) -> list[str]:
    """The proxies as a resume must find them again: each one's weights by sha256 prefix (its name where none)."""
    return [record["sha256"][:16] if record.get("sha256") else record["name"] for record in pool.provenance]


def artifact_identity(artifacts: MethodArtifacts) -> dict:
    """The method's artifacts (experts, teacher) as a resume must find them again: their sha256 prefixes."""
    hashes = {name: record["sha256"][:16] for name, record in artifacts.provenance.items() if record.get("sha256")}
    return {"artifacts": hashes} if hashes else {}


def set_cmi(pool: ProxyPool, images: torch.Tensor, labels: torch.Tensor, space: str, num_classes: int) -> float:
    """Mean over the proxies of the class-aware CMI of the set (``dataset_cmi``, also behind the metric)."""
    values = dataset_cmi(images, labels, list(pool), space=space, num_classes=num_classes)
    return sum(values) / len(values)


def gain_line(result: EvaluationResult, baseline: EvaluationResult) -> str:
    """One line: the distilled set's accuracy minus the random subset's, against the noise of both (their
    population stds over runs added in quadrature)."""
    gain, noise = 100 * (result.mean - baseline.mean), 100 * (result.std ** 2 + baseline.std ** 2) ** 0.5
    verdict = "above" if gain > noise else "below" if gain < -noise else "within"
    return (f"{result.arch}: distilled {100 * result.mean:.2f} % vs random real subset {100 * baseline.mean:.2f} %: "
            f"{gain:+.2f} points ({verdict} the noise, ±{noise:.2f})")


def evaluate_across_processes(accelerator: Accelerator, evaluate, runs: int, seed: int) -> EvaluationResult:
    """``evaluate(runs=k, seed=s)`` for this process's share of the ``runs`` seeds (seed, seed+1, ...), gathered
    on every process: the final networks train in parallel instead of serially on the main process."""
    with accelerator.split_between_processes(list(range(runs))) as mine:
        mine = list(mine)
    part = evaluate(runs=len(mine), seed=seed + mine[0]) if mine else None
    parts = [p for p in gather_object([part]) if p is not None]
    first = parts[0]
    validation = [a for p in parts for a in (p.validation_accuracies or [])]
    return dataclasses.replace(first, accuracies=[a for p in parts for a in p.accuracies],
                               seeds=[s for p in parts for s in p.seeds], validation_accuracies=validation or None)


def resolve_method_artifacts(recipe: DistillRecipe, data: ImageClassificationData,
                             accelerator: Accelerator) -> MethodArtifacts:
    """The method's pretrained artifacts (experts, teachers), the main process first (it trains and caches
    what a train: spec asks for; the others then read the cache)."""
    with accelerator.main_process_first():
        try:
            return get_method(recipe.run.method).resolve_artifacts(recipe.method, data,
                                                                   progress=accelerator.is_main_process,
                                                                   compile=recipe.run.compile)
        except MethodConfigError as err:
            raise ConfigError(str(err)) from err


def build_method(recipe: DistillRecipe, data: ImageClassificationData, device: torch.device,
                 artifacts: MethodArtifacts | None = None) -> DistillationMethod:
    context = MethodContext(real=data.train, ipc=recipe.synthetic.ipc, seed=recipe.run.seed, device=device,
                            precision=recipe.run.precision, compile=recipe.run.compile,
                            augmentation=recipe.method.augmentation(data.name), dataset=data.name,
                            artifacts=dict(artifacts.items) if artifacts is not None else {},
                            iterations=recipe.run.iterations)
    try:
        return get_method(recipe.run.method)(recipe.method, context)
    except MethodConfigError as err:
        raise ConfigError(str(err)) from err


def check_block_run(recipe: DistillRecipe, blocks: list[Block]) -> None:
    """Settings a method with blocks cannot honour, refused before any long work."""
    if recipe.cmi.cmi_weight > 0 and min(b.per_class for b in blocks) < 2:
        raise ConfigError("cmi_weight > 0 but a block holds one image per class, whose class-aware CMI is exactly 0; "
                          "put >= 2 images of each class in a block (images_per_block) or set cmi_weight 0")
    ev = recipe.evaluation
    if ev.eval_every or ev.eval_at:
        raise ConfigError("eval_every / eval_at: this method distills the set block by block, so there is no whole "
                          "set to evaluate before the end; unset them")
    if recipe.run.resume_from_checkpoint not in (None, "latest"):
        raise ConfigError(f"resume_from_checkpoint={recipe.run.resume_from_checkpoint!r}: a run of blocks resumes "
                          "with 'latest' (finished blocks are kept, the block in flight resumes from its checkpoint)")


def evaluation_teacher(recipe: DistillRecipe, data: ImageClassificationData, artifacts: MethodArtifacts,
                       accelerator: Accelerator) -> tuple[torch.nn.Module, dict]:
    """The teacher a ``kd`` protocol distills from — ``eval_teacher`` (resolved as a proxy), else the method's —
    and its provenance (name, path or repo, sha256), which the card records so that a user of the set (and
    ``scripts/evaluate_synthetic.py``) relabels with the same one."""
    spec = recipe.evaluation.eval_teacher
    if spec:
        with accelerator.main_process_first():
            pool = ProxyPool.from_pretrained([spec], data, cache_dir=recipe.cmi.proxy_cache_dir,
                                             dataset_id=recipe.data.dataset, progress=accelerator.is_main_process)
        return pool[0], dict(pool.provenance[0])
    if "teacher" in artifacts.items:
        return artifacts.items["teacher"], dict(artifacts.provenance.get("teacher") or {})
    raise ConfigError(f"eval_protocol={recipe.evaluation.eval_protocol} trains against a teacher but the method has "
                      "none; set eval_teacher (a timm name, hf-hub:, local-dir: or a train: spec)")


def available_cpus() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, a cgroup cpuset), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_process_threads(requested: int | None, num_processes: int) -> int:
    """Intra-op CPU threads of this process: ``requested``, else the cores shared between the processes. On every
    device: `accelerate launch` sets OMP_NUM_THREADS=1 on CPUs, and processes driving GPUs still run host work
    (sampling, augmentation draws) that N processes × all cores would oversubscribe."""
    torch.set_num_threads(requested or max(1, available_cpus() // num_processes))
    return torch.get_num_threads()


def run_distillation(recipe: DistillRecipe) -> dict:
    """Run one distillation; returns the final evaluation summary. Raises ConfigError & co. on bad input."""
    validate(recipe)
    data_args, cmi_args, ev, run = recipe.data, recipe.cmi, recipe.evaluation, recipe.run
    ipc = recipe.synthetic.ipc
    folder = RunFolder(recipe.run_dir)
    accelerator = Accelerator(
        cpu=run.cpu,
        log_with=None if run.report_to == "none" else run.report_to,
        project_config=ProjectConfiguration(project_dir=str(folder.root), logging_dir=str(folder.logs)),
    )
    device = accelerator.device
    set_process_threads(run.threads_per_process, accelerator.num_processes)
    accelerator.print(f"accelerate: {accelerator.num_processes} process(es), {accelerator.distributed_type.value}, "
                      f"device {device}, {torch.get_num_threads()} threads per process")
    data = load_image_classification(
        data_args.dataset, config_name=data_args.dataset_config, image_column=data_args.image_column,
        label_column=data_args.label_column, train_split=data_args.train_split, test_split=data_args.test_split,
        validation_per_class=data_args.validation_per_class, seed=run.seed, image_size=data_args.image_size,
        in_memory=data_args.in_memory, num_workers=data_args.num_workers)
    smallest = min(data.train.class_count(c) for c in range(data.num_classes))
    if ipc > smallest:
        raise ConfigError(f"ipc={ipc} exceeds the {smallest} training images of the smallest class of "
                          f"{data.name}; choose ipc <= {smallest}")
    identity = fingerprint(recipe, data)
    block_run = (folder.root / BLOCKS_DIR / "run.json").exists()
    saved_identity = None
    if run.resume_from_checkpoint and not block_run:  # refuse an incompatible resume before any long work
        checkpoint = find_checkpoint(folder.root, run.resume_from_checkpoint)
        saved_identity = json.loads((checkpoint / STATE_FILE).read_text())["fingerprint"]
        check_compatible(saved_identity, identity)
    artifacts = resolve_method_artifacts(recipe, data, accelerator)
    identity.update(artifact_identity(artifacts))
    if saved_identity is not None:  # other experts or teacher: a resume would continue another run
        check_compatible(saved_identity, identity)
    if artifacts.transform is not None:  # e.g. the experts' ZCA: every split, the proxies' training included
        data = data.with_transform(artifacts.transform)
    method = build_method(recipe, data, device, artifacts)
    blocks = method.blocks()
    if blocks is not None:
        check_block_run(recipe, blocks)
    eval_protocol = get_protocol(ev.eval_protocol)
    teacher, teacher_record = (evaluation_teacher(recipe, data, artifacts, accelerator)
                               if eval_protocol.requires_teacher else (None, None))

    pool = None
    if cmi_args.proxies:
        with accelerator.main_process_first():  # train:-specs are trained once, by the main process
            cache_dir = Path(cmi_args.proxy_cache_dir)
            if artifacts.transform is not None:  # proxies trained in the transformed space are cached apart
                cache_dir = cache_dir / f"{artifacts.transform.kind}-{artifacts.transform.sha256[:12]}"
            pool = ProxyPool.from_pretrained(cmi_args.proxies, data, cache_dir=cache_dir,
                                             dataset_id=data_args.dataset, progress=accelerator.is_main_process)
        pool.to(device)
    regularizer = None
    if cmi_args.cmi_weight > 0:
        identity["proxies"] = proxy_identity(pool)  # the term's networks shape the set: a resume keeps them
        if saved_identity is not None:  # before anything is written
            check_compatible(saved_identity, identity)
        regularizer = CMIRegularizer(list(pool), cmi_args.cmi_weight, space=cmi_args.cmi_space,
                                     normalization=cmi_args.cmi_normalization, every=cmi_args.cmi_every,
                                     class_chunk_size=cmi_args.cmi_class_chunk, seed=run.seed,
                                     precision=cmi_args.cmi_precision, compile=run.compile)
    synthetic = method.init_synthetic() if blocks is None else None  # blocks are built one at a time
    initial_cmi = None
    if pool is not None and synthetic is not None and accelerator.is_main_process:  # initial -> final CMI
        initial_cmi = set_cmi(pool, *(t.detach() for t in synthetic.decode()), cmi_args.cmi_space, data.num_classes)

    eval_augmentation = None
    if ev.eval_protocol == "dsa" or eval_protocol.requires_teacher:  # digits are not flipped
        eval_augmentation = default_augmentation(data.name, eval_protocol.augmentation)

    def eval_options() -> dict:
        """The protocol with what the method has learned so far (MTT: its step size) applied."""
        protocol = get_protocol(ev.eval_protocol, **method.evaluation_overrides())
        return dict(protocol=protocol, epochs=ev.eval_epochs, augmentation=eval_augmentation,
                    precision=run.precision, compile=run.compile, device=device, teacher=teacher)

    def periodic_evaluation(images, labels, step) -> dict:
        record = {}
        for arch in ev.eval_archs:
            result = evaluate_synthetic(images, labels, data.test, arch=arch, runs=ev.eval_every_runs,
                                        seed=run.seed, progress=False, **eval_options())
            record[f"accuracy/{arch}"] = result.mean
        if pool is not None:
            record["set_cmi"] = set_cmi(pool, images, labels, cmi_args.cmi_space, data.num_classes)
        accelerator.print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items()))
        return record

    if accelerator.is_main_process:
        folder.root.mkdir(parents=True, exist_ok=True)
        folder.config.write_text(to_yaml(recipe.flat()))
    accelerator.init_trackers(recipe.resolved_run_name, config={
        k: v for k, v in recipe.flat().items() if isinstance(v, (int, float, str, bool))})
    if blocks is None:
        distiller = Distiller(accelerator, method, synthetic, regularizer, run.iterations, folder.root, identity,
                              checkpoint_every=run.checkpoint_every, keep_checkpoints=run.keep_checkpoints,
                              eval_every=ev.eval_every, evaluate=periodic_evaluation, log_every=run.log_every,
                              evaluate_at_start=ev.eval_at_start, eval_at=ev.eval_at)
        distiller.run(run.resume_from_checkpoint)
        images, labels = distiller.decoded()
        parametrization, condensed = synthetic.describe(), distiller.synthetic.condensed()
    else:
        distiller = BlockwiseDistiller(accelerator, method, regularizer, run.iterations, folder.root, identity,
                                       data.mean, data.std, checkpoint_every=run.checkpoint_every,
                                       keep_checkpoints=run.keep_checkpoints, log_every=run.log_every)
        distiller.run(resume=bool(run.resume_from_checkpoint))
        images, labels = distiller.load()
        parametrization, condensed = distiller.describe(), None
    labels = method.final_labels(images, labels)
    hard_labels = labels.argmax(dim=1) if labels.dim() == 2 else labels  # the CMI groups by class

    results = []
    for arch in ev.eval_archs:
        result = evaluate_across_processes(accelerator, lambda runs, seed, arch=arch: evaluate_synthetic(
            images, labels, data.test, arch=arch, runs=runs, seed=seed, validation=data.validation, **eval_options()),
            ev.eval_runs, run.seed)
        accelerator.print(f"final accuracy {result}")
        results.append(result)
    baselines = []
    if ev.eval_baseline:
        for arch in ev.eval_archs:
            baselines.append(evaluate_across_processes(accelerator, lambda runs, seed, arch=arch: (
                evaluate_random_subset(data, ipc, arch=arch, runs=runs, seed=seed, **eval_options())),
                ev.eval_runs, run.seed))
            accelerator.print(f"baseline (random real ipc {ipc}) {baselines[-1]}")
        for result, baseline in zip(results, baselines, strict=True):
            accelerator.print(gain_line(result, baseline))

    summary: dict = {}
    if accelerator.is_main_process:
        cmi = set_cmi(pool, images, hard_labels, cmi_args.cmi_space, data.num_classes) if pool is not None else None
        if cmi is not None:
            initial = f"{initial_cmi:.4f} initial -> " if initial_cmi is not None else ""
            accelerator.print(f"class-aware CMI of the set (mean over {len(pool)} proxies): {initial}{cmi:.4f} "
                              "final nats")
        distiller.log_record({"step": run.iterations, "event": "evaluation", "final": True,
                              **{f"accuracy/{r.arch}": r.mean for r in results},
                              **({"final_cmi": cmi} if cmi is not None else {})})
        distillation = {
            "method": run.method,
            "method_config": method.describe(),
            "parametrization": parametrization,
            "augmentation": method.context.augmentation,
            "regularizer": None if regularizer is None else {
                "name": "class_aware_cmi", "weight": cmi_args.cmi_weight, "space": cmi_args.cmi_space,
                "normalization": cmi_args.cmi_normalization, "every": cmi_args.cmi_every,
                "proxies": pool.provenance},
            "artifacts": artifacts.provenance or None,
            "transform": None if artifacts.transform is None else artifacts.transform.describe(),
            "evaluation": {"protocol": ev.eval_protocol, "overrides": method.evaluation_overrides(),
                           **({"teacher": teacher_record} if teacher is not None else {})},
            "ipc": ipc, "iterations": run.iterations, "seed": run.seed,
            "image_size": list(data.image_shape),
            "normalization": {"mean": list(data.mean), "std": list(data.std)},
            "initial_cmi": initial_cmi,
            "final_cmi": cmi,
            "library": f"cmidd-hf {__version__}",
            "results": [r.to_dict() for r in results],
        }
        synthetic_set = SyntheticSet(images, labels, data.class_names, data.mean, data.std, distillation,
                                     source=data_args.dataset, license=data.license,
                                     config_name=recipe.hub.hub_config, condensed=condensed,
                                     transform=artifacts.transform)
        if baselines:
            synthetic_set.record_results(baselines, kind="baselines")
        plot_curves(folder.metrics, folder.curves)
        synthetic_set.save(folder.root)
        summary = {"run_dir": str(folder.root), "results": distillation["results"], "final_cmi": cmi}
        accelerator.print(f"wrote {folder.root}")
        if recipe.hub.push_to_hub:
            commit = synthetic_set.push_to_hub(recipe.hub.push_to_hub, private=recipe.hub.hub_private,
                                               extra_files=folder.published_files())
            accelerator.print(f"pushed to {getattr(commit, 'commit_url', recipe.hub.push_to_hub)}")
            summary["commit"] = getattr(commit, "oid", None)
    accelerator.end_training()
    return summary


def configure_logging() -> None:
    """The command-line log: the library's INFO lines (proxy training, ...), other libraries' warnings only."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("cmidd_hf").setLevel(logging.INFO)


def main_entry(argv, default_config: str | Path | None, method: str = "dm") -> int:
    """CLI of ``recipes/distill_<method>.py``: bad input -> one line on stderr and exit code 2;
    interruption -> 130."""
    import sys

    from ..artifacts.resolver import ArtifactError
    from ..data.errors import DataError
    from ..engine.distill import NonFiniteLossError, ResumeError

    configure_logging()
    try:
        run_distillation(parse_recipe(argv, method, default_config))
    except (ConfigError, DataError, ArtifactError, ResumeError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return 130
    return 0
