"""Shared fixtures: an offline stand-in for the Hugging Face Hub built on the real Hub cache layout."""

from __future__ import annotations

import fnmatch
import hashlib
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import yaml
from huggingface_hub import HfApi
from huggingface_hub.errors import EntryNotFoundError

FAKE_TOKEN = "hf_cmiddTestTokenThatMustNeverBeWritten"


@pytest.fixture(scope="session", autouse=True)
def datasets_cache(tmp_path_factory) -> Path:
    """A datasets cache of the session's own (recipes started by tests inherit it): no test reads Arrow files that
    an earlier session, or older code, prepared."""
    import datasets

    root = tmp_path_factory.mktemp("datasets-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_DATASETS_CACHE", str(root))
    patch.setattr(datasets.config, "HF_DATASETS_CACHE", root)
    yield root
    patch.undo()


@pytest.fixture(autouse=True)
def fresh_compiler_state():
    """Each test compiles as a fresh process would. Every architecture shares one ``forward`` code object, so
    without this dynamo remembers the batch and image sizes earlier tests fed it and compiles later tests' networks
    with symbolic shapes (the default recipe run took 175 s in the suite instead of 50 s alone, cold, CPU A).
    Inductor's on-disk cache is kept: a graph an earlier test compiled is only re-traced."""
    yield
    import torch

    torch._dynamo.reset()


@pytest.fixture(scope="session")
def proxy_cache(tmp_path_factory) -> Path:
    """One proxy cache for every recipe run of the suite: each proxy spec (dataset, arch, count, epochs, ...) is
    trained once per session, not once per test (the cache key keeps different specs apart)."""
    return tmp_path_factory.mktemp("proxy-cache")


@pytest.fixture(scope="session")
def tiny_teacher(proxy_cache) -> Path:
    """The BN teacher of ``tests/fixtures/tiny_sre2l_cmi.yaml`` trained once into the session proxy cache (runs
    started side by side then only read it)."""
    from cmidd_hf import load_image_classification
    from cmidd_hf.artifacts.proxies import ProxyPool

    spec = yaml.safe_load((Path(__file__).parent / "fixtures" / "tiny_sre2l_cmi.yaml").read_text())["teacher"]
    ProxyPool.from_pretrained([spec], load_image_classification("mnist-5k"), cache_dir=proxy_cache)
    return proxy_cache


class FakeHub:
    """Records ``create_repo``/``upload_folder`` calls and publishes each commit as a snapshot in a Hub cache.

    Reads (``snapshot_download``, ``hf_hub_download``, timm's ``hf-hub:``) then go through the real
    huggingface_hub code, offline, against that cache (layout: ``<type>s--org--name/{refs/main,snapshots/<sha>}``).
    """

    token = FAKE_TOKEN

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.created: list[dict] = []
        self.commits: list[dict] = []

    def repo_root(self, repo_id: str, repo_type: str) -> Path:
        return self.cache / f"{repo_type}s--{repo_id.replace('/', '--')}"

    def snapshot(self, repo_id: str, repo_type: str) -> Path | None:
        ref = self.repo_root(repo_id, repo_type) / "refs" / "main"
        return self.repo_root(repo_id, repo_type) / "snapshots" / ref.read_text() if ref.exists() else None

    def publish(self, repo_id: str, folder: Path, repo_type: str = "dataset", allow_patterns=None) -> list[str]:
        """A commit adding ``folder``'s files (filtered like upload_folder) on top of the current snapshot."""
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        if allow_patterns:
            files = [f for f in files if any(fnmatch.fnmatch(f, pattern) for pattern in allow_patterns)]
        previous = self.snapshot(repo_id, repo_type)
        sha = hashlib.sha1(f"{repo_id}{len(self.commits)}".encode()).hexdigest()
        target = self.repo_root(repo_id, repo_type) / "snapshots" / sha
        if previous is not None:
            shutil.copytree(previous, target)
        for name in files:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / name, target / name)
        (self.repo_root(repo_id, repo_type) / "refs").mkdir(parents=True, exist_ok=True)
        (self.repo_root(repo_id, repo_type) / "refs" / "main").write_text(sha)
        return files

    # ---- the patched HfApi methods

    def create_repo(self, api, repo_id, *, repo_type=None, private=None, exist_ok=False, **kwargs):
        self.created.append({"repo_id": repo_id, "repo_type": repo_type, "private": private, "exist_ok": exist_ok,
                             "token": api.token})
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, api, *, repo_id, folder_path, repo_type=None, commit_message=None, allow_patterns=None,
                      **kwargs):
        folder = Path(folder_path)
        contents = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        files = self.publish(repo_id, folder, repo_type or "model", allow_patterns)
        self.commits.append({"repo_id": repo_id, "repo_type": repo_type, "files": files, "contents": contents,
                             "message": commit_message, "allow_patterns": allow_patterns, "kwargs": kwargs})
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{len(self.commits)}",
                                          commit_message=commit_message or "", commit_description="",
                                          oid=f"{len(self.commits):040x}")

    def hf_hub_download(self, api, repo_id, filename, *, repo_type=None, **kwargs):
        snapshot = self.snapshot(repo_id, repo_type or "model")
        if snapshot is None or not (snapshot / filename).is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(snapshot / filename)


@pytest.fixture(scope="session")
def expert_cache(tmp_path_factory) -> Path:
    """The experts of tests/fixtures/tiny_mtt_cmi.yaml, trained once per session into the cache its train: spec
    resolves to (pass it as --expert_cache_dir)."""
    from cmidd_hf import load_image_classification
    from cmidd_hf.artifacts.experts import resolve_experts

    spec = yaml.safe_load((Path(__file__).parent / "fixtures" / "tiny_mtt_cmi.yaml").read_text())["experts"]
    cache = tmp_path_factory.mktemp("expert-cache")
    resolve_experts(spec, load_image_classification("mnist-5k"), cache, "mnist-5k", progress=False,
                    compile=False)  # as the fixture's runs (compile: false)
    return cache


@pytest.fixture()
def fake_hub(tmp_path, monkeypatch) -> FakeHub:
    """HfApi writes go to a FakeHub; reads use its cache offline. A token is set, so it must never be written."""
    hub = FakeHub(tmp_path / "hub-cache")
    hub.cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub.cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: hub.create_repo(api, repo_id, **kw))
    monkeypatch.setattr(HfApi, "upload_folder", lambda api, **kw: hub.upload_folder(api, **kw))
    monkeypatch.setattr(HfApi, "hf_hub_download",
                        lambda api, repo_id, filename, **kw: hub.hf_hub_download(api, repo_id, filename, **kw))
    return hub
