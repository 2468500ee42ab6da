"""The factory builds one provider per enabled instance the policy names, each named after what it manages."""

from __future__ import annotations

import pytest

from controlplane.policy import load_policy
from controlplane.providers.factory import build_providers
from tests.builders import DEMO

CLOUD = DEMO.parent / "examples" / "cloud.yaml"


def test_every_cloud_instance_is_a_provider_of_its_own() -> None:
    names = [p.name for p in build_providers(load_policy(CLOUD))]
    assert names == [
        "route53:llm.example.com",
        "route53:llm.example.org",
        "cloud_dns:my-llm-project/llm-zone",
        "global_accelerator:0123vxyz",
    ]


@pytest.mark.parametrize("kind", ["route53", "cloud_dns", "global_accelerator"])
def test_a_kind_can_be_left_out(kind: str) -> None:
    names = [p.name for p in build_providers(load_policy(CLOUD), disabled=[kind])]
    assert names and not any(n.startswith(kind + ":") for n in names)


def test_cloud_providers_are_paced_and_local_ones_are_read_every_time() -> None:
    providers = build_providers(load_policy(CLOUD))
    assert all(p.tuning.resync > 0 and p.tuning.min_interval > 0 for p in providers)
    local = build_providers(load_policy(DEMO), disabled=["haproxy"])
    assert [p.name for p in local] == ["localdns"] and local[0].tuning.resync == 0
