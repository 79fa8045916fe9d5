"""Every config the repository ships builds a gateway: the demo, the real-provider
example, the container configs and the one inside the Kubernetes manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.app import Gateway
from gateway.config import load

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test"}
CONFIGS = sorted([*ROOT.glob("config/*.yaml"), *ROOT.glob("deploy/config/*.yaml")])


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_shipped_config_builds(path):
    gateway = Gateway(load(str(path), KEYS))
    assert gateway.providers


def test_config_in_the_kubernetes_manifest_builds(tmp_path):
    documents = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "sidecar.yaml").read_text()))
    (config_map,) = [d for d in documents if d and d.get("kind") == "ConfigMap"]
    path = tmp_path / "gateway.yaml"
    path.write_text(config_map["data"]["gateway.yaml"])
    assert Gateway(load(str(path), KEYS)).providers
