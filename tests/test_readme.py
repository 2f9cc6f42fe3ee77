"""The README is the contract: its commands are the ones CI runs, its stated defaults are the shipped config's,
and every file or page it names exists."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_quickstart_is_two_commands_and_ci_installs_and_tests_exactly_as_the_readme_says():
    quickstart = README.split("## Quickstart", 1)[1]
    install, main_job = code_blocks(quickstart, "bash")[0].strip().splitlines()
    assert main_job == "accelerate launch recipes/distill_dm.py"
    assert install in CI.splitlines()  # the very line CI runs
    (test_command,) = code_blocks(README.split("## Tests", 1)[1], "bash")[0].strip().splitlines()
    env, command = test_command.split(" ", 1)
    assert env == "HF_HUB_OFFLINE=1" and "export HF_HUB_OFFLINE=1" in CI
    assert CI.strip().splitlines()[-1] == command


def test_the_stated_defaults_are_the_shipped_default_config():
    config_path = re.search(r"default config `(recipes/configs/[^`]+)`", README).group(1)
    assert config_path == "recipes/configs/dm_cmi/mnist-5k_ipc10.yaml"  # what distill_dm.py loads
    assert f'"{Path(config_path).parent.name}" / "{Path(config_path).name}"' in (
        ROOT / "recipes" / "distill_dm.py").read_text()
    config = yaml.safe_load((ROOT / config_path).read_text())
    stated = re.search(r"\*\*IPC (\d+), λ = ([\d.]+),\s+(\d+) iterations, (\d+) ConvNet-3 proxies × (\d+) epochs, "
                       r"(\d+) evaluation networks × (\d+) epochs\*\*", README)
    assert stated, "the quickstart's defaults sentence changed; keep it parseable"
    ipc, lam, iterations, proxies, proxy_epochs, runs, epochs = stated.groups()
    (proxy_spec,) = config["proxies"]
    assert (int(ipc), float(lam), int(iterations)) == (config["ipc"], config["cmi_weight"], config["iterations"])
    assert proxy_spec["train"]["arch"] == "convnet3"
    assert (int(proxies), int(proxy_epochs)) == (proxy_spec["train"]["count"], proxy_spec["train"]["epochs"])
    assert (int(runs), int(epochs)) == (config["eval_runs"], config["eval_epochs"])
    assert config["eval_archs"] == ["convnet3"] and config["method"] == "dm"


def test_every_file_command_and_page_the_readme_names_exists():
    for page in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / page).is_file(), page
    docs = README + "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    for path in set(re.findall(r"recipes/(?:distill_\w+\.py|configs/[\w/.-]+\.yaml|accelerate_configs/[\w.-]+)",
                               docs)):
        assert (ROOT / path).exists(), path
    for script in set(re.findall(r"scripts/\w+\.py", docs)):
        assert (ROOT / script).is_file(), script
    for page in re.findall(r"\]\(([\w-]+\.md)", "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))):
        assert (ROOT / "docs" / page).is_file(), page
