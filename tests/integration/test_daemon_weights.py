"""The daemon syncs model weights into file:// region buckets and routes only to regions that hold them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from chaos.loopback import free_port, loopback_policy
from chaos.simregion import SimFleet
from controlplane.demo import DEMO_MODEL, DEMO_VERSIONS, demo_stack, guide, with_weights
from tests.conftest import until
from tests.integration.daemon_helpers import FULL, TOKEN, Plane, policy_data, running_plane, write_policy

MODEL = "llm"
REGIONS = ("us-east", "us-west", "eu-west", "eu-central")


def weights_policy(fleet: SimFleet, buckets: Path, version: str = "v1") -> dict[str, Any]:
    """The integration policy with each region's bucket under `buckets` and the chat service on MODEL; the
    sync interval is long, so only the start, a reload and POST /sync sync."""
    data = policy_data(fleet)
    for region in data["regions"]:
        region["bucket"] = (buckets / region["name"]).as_uri()
    data["models"] = [{"name": MODEL, "source": (buckets / "source").as_uri(), "version": version}]
    data["services"][0]["model"] = MODEL
    data["sync"] = {"interval": 3600}
    return data


def source_version(buckets: Path, version: str) -> None:
    folder = buckets / "source" / MODEL / version
    folder.mkdir(parents=True)
    for name, size in (("config.json", 40), ("shard-0.bin", 3000), ("shard-1.bin", 2000)):
        (folder / name).write_bytes(version.encode() * (size // len(version)))


def reason(plane: Plane, region: str) -> str:
    plan = plane.daemon.plan
    group = plan.group("chat", "global") if plan else None
    assert group is not None
    return next(w.reason for w in group.weights if w.region == region)


async def test_a_region_without_the_weights_gets_none_until_a_sync_lands_them(
    fleet: SimFleet, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    buckets = tmp_path / "buckets"
    source_version(buckets, "v1")
    # us-west's bucket cannot be read: a plain file stands where its folder should be.
    (buckets / "us-west").write_text("not a folder")
    policy = tmp_path / "policy.yaml"
    write_policy(policy, weights_policy(fleet, buckets))
    async with running_plane(policy, tmp_path / "state") as plane:
        await plane.ready()
        await until(lambda: plane.weights().get("us-east"), within=8, what="traffic to the synced regions")
        weights = plane.weights()
        assert weights["us-west"] == 0 and all(weights[r] > 0 for r in ("us-east", "eu-west", "eu-central"))
        assert "no verified weights: model llm version v1 not surveyed yet" in reason(plane, "us-west")
        assert (buckets / "us-east" / MODEL / "CURRENT").read_text() == "v1"

        status, body = await plane.request("POST", "/sync")
        assert status == 401  # a sync is a change: the token is needed
        (buckets / "us-west").unlink()
        status, body = await plane.request("POST", "/sync", headers=plane.auth())
        assert status == 202, body
        await plane.settled({"global": FULL["global"]})
        assert (buckets / "us-west" / MODEL / "CURRENT").read_text() == "v1"

        status, body = await plane.get("/status")
        held = body["regions"]["us-west"]["models"][MODEL]
        assert held["wanted"] == "v1" and held["current"] == "v1" and held["verified"] is True
        assert held["last_error"] is None and held["bytes_copied"] == 5040
        assert held["last_sync"] is not None
        metrics = await plane.metrics()
        labels = frozenset({("region", "us-west"), ("model", MODEL)})
        assert metrics[("controlplane_model_verified", labels)] == 1.0
        assert metrics[("controlplane_model_bytes_copied_total", labels)] == 5040
        assert metrics[("controlplane_model_sync_age_seconds", labels)] >= 0


async def test_a_new_version_takes_weight_from_regions_without_it_until_they_are_synced(
    fleet: SimFleet, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    buckets = tmp_path / "buckets"
    source_version(buckets, "v1")
    source_version(buckets, "v2")
    policy = tmp_path / "policy.yaml"
    write_policy(policy, weights_policy(fleet, buckets))
    async with running_plane(policy, tmp_path / "state") as plane:
        await plane.settled({"global": FULL["global"]})
        # v2 cannot land in eu-central: a plain file stands where its version folder would be.
        (buckets / "eu-central" / MODEL / "v2").write_text("in the way")
        write_policy(policy, weights_policy(fleet, buckets, version="v2"))
        await until(
            lambda: plane.weights().get("eu-central") == 0, within=8, what="eu-central to lose weight"
        )
        assert "model llm version v2" in reason(plane, "eu-central")
        await until(
            lambda: all(plane.weights()[r] > 0 for r in ("us-east", "us-west", "eu-west")),
            within=8,
            what="the regions v2 landed in to get traffic back",
        )
        assert (buckets / "us-east" / MODEL / "CURRENT").read_text() == "v2"
        assert plane.weights()["eu-central"] == 0
        _, body = await plane.get("/status")
        held = body["regions"]["eu-central"]["models"][MODEL]
        assert held["wanted"] == "v2" and held["verified"] is False and held["last_error"]
        metrics = await plane.metrics()
        assert (
            metrics[("controlplane_model_verified", frozenset({("region", "eu-central"), ("model", MODEL)}))]
            == 0
        )

        (buckets / "eu-central" / MODEL / "v2").unlink()
        status, _ = await plane.request("POST", "/sync", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 202
        await plane.settled({"global": FULL["global"]})
        assert (buckets / "eu-central" / MODEL / "CURRENT").read_text() == "v2"


async def test_the_demo_starts_with_empty_region_buckets_and_routes_once_the_sync_landed_them(
    tmp_path: Path,
) -> None:
    shipped = tmp_path / "demo.yaml"
    shipped.write_text(loopback_policy(free_port(), free_port(), f"127.0.0.1:{free_port()}"))
    state = tmp_path / "state"
    state.mkdir()
    policy_path = with_weights(shipped, state)
    assert policy_path == state / "policy.yaml"
    buckets = state / "buckets"
    assert not any((buckets / r).exists() for r in REGIONS)
    async with demo_stack(
        policy_path, state, haproxy=False, api_port=free_port(), handle_signals=False
    ) as demo:
        daemon = demo.daemon

        def routed() -> bool:
            group = daemon.plan.group("chat", "global") if daemon.plan else None
            return group is not None and all(w.weight > 0 for w in group.weights)

        await until(routed, within=10, what="every region to get traffic")
        for region in REGIONS:
            assert (buckets / region / DEMO_MODEL / "CURRENT").read_text() == DEMO_VERSIONS[0]
        text = guide(daemon.policy, state, demo.token, with_haproxy=False)
        assert f"rm -r {buckets.resolve() / 'eu-central' / DEMO_MODEL}" in text
        assert "127.0.0.1:8080/sync" in text


async def test_a_restart_while_a_bucket_is_unreadable_keeps_routing_to_the_weights_that_had_landed(
    fleet: SimFleet, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    buckets = tmp_path / "buckets"
    source_version(buckets, "v1")
    policy = tmp_path / "policy.yaml"
    write_policy(policy, weights_policy(fleet, buckets))
    async with running_plane(policy, tmp_path / "state") as plane:
        await plane.settled({"global": FULL["global"]})
    # The bucket API is down across the restart: a plain file stands where us-west's bucket was.
    (buckets / "us-west").rename(tmp_path / "us-west-aside")
    (buckets / "us-west").write_text("not a folder")
    async with running_plane(policy, tmp_path / "state") as plane:
        await plane.ready()
        await plane.settled({"global": FULL["global"]})
        _, body = await plane.get("/status")
        held = body["regions"]["us-west"]["models"][MODEL]
        assert held["verified"] is True and held["last_error"]
