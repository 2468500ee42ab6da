"""Issue 6's policy contract: client group geo and the cloud providers (route53, cloud_dns, global_accelerator)."""

from __future__ import annotations

import pytest

from controlplane.cli import main
from controlplane.policy import (
    ISO_COUNTRIES,
    Continent,
    PolicyError,
    Route53Settings,
    in_zone,
    parse_policy,
)
from tests.builders import DEMO

CLOUD = DEMO.parent / "examples" / "cloud.yaml"
CLOUD_TEXT = CLOUD.read_text(encoding="utf-8")
ROUTE53 = (
    "  route53:\n"
    "    - {zone: llm.example.com, owner: prod}\n"
    "    - {zone: llm.example.org, owner: prod, max_delete_share: 0.5}\n"
)
GA_GROUPS = "{us-east: us-east-1, us-west: us-west-2, eu-west: eu-west-1, ch-zurich: eu-central-2}"
GA = (
    "  global_accelerator:\n"
    "    listener_arn: arn:aws:globalaccelerator::123456789012:accelerator/1234abcd-abcd-1234-abcd-1234abcdefgh/listener/0123vxyz\n"
    "    service: chat\n"
    "    client_group: global\n"
    f"    endpoint_groups: {GA_GROUPS}\n"
)


def edited(old: str, new: str) -> str:
    assert old in CLOUD_TEXT, old
    return CLOUD_TEXT.replace(old, new, 1)


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "c.yaml")
    return [str(p) for p in info.value.problems]


def test_the_example_validates_through_the_cli(capsys):
    assert main(["validate", str(CLOUD)]) == 0
    assert "1 policy file(s) valid" in capsys.readouterr().out


def test_the_example_as_the_providers_read_it():
    policy = parse_policy(CLOUD_TEXT)
    eu = policy.client_group("eu").geo
    assert eu is not None
    assert (eu.continents, eu.countries, eu.gcp_regions) == (
        (Continent.EU,),
        ("GB", "NO"),
        ("europe-west1", "europe-north1"),
    )
    providers = policy.providers
    assert [r.instance_name for r in providers.route53_list] == [
        "route53:llm.example.com",
        "route53:llm.example.org",
    ]
    assert [(r.max_delete_share, r.enabled, r.endpoint_url) for r in providers.route53_list] == [
        (0.34, True, None),
        (0.5, True, None),
    ]
    (dns,) = providers.cloud_dns_list
    assert (dns.instance_name, dns.owner, dns.api_endpoint) == (
        "cloud_dns:my-llm-project/llm-zone",
        "prod",
        None,
    )
    (ga,) = providers.global_accelerator_list
    assert ga.instance_name == "global_accelerator:0123vxyz"
    assert ga.endpoint_groups["ch-zurich"] == "eu-central-2"


# The contract exactly as issue 6 writes it, around a minimal policy (NO quoted: see the bad table).
CONTRACT = """
version: 1
regions:
  - {name: us-east, endpoint: "http://127.0.0.1:8001", jurisdiction: US}
  - {name: eu-west, endpoint: "http://127.0.0.1:8002", jurisdiction: EU}
client_groups:
  - name: eu
    sources: [10.20.0.0/16]
    geo:
      continents: [EU]
      countries: [GB, CH, "NO"]
      gcp_regions: [europe-west1]
    allowed_jurisdictions: [EU]
  - {name: global, allowed_jurisdictions: [US, EU]}
default_client_group: global
services:
  - {name: chat, dns_name: chat.llm.example.com, regions: [us-east, eu-west]}
providers:
  route53:
    zone: llm.example.com
    endpoint_url: http://127.0.0.1:5000
    owner: prod
  cloud_dns:
    project: my-project
    managed_zone: llm-zone
    api_endpoint: http://127.0.0.1:8089
    owner: prod
  global_accelerator:
    endpoint_url: http://127.0.0.1:5001
    listener_arn: arn:aws:globalaccelerator::123456789012:accelerator/abc/listener/def
    service: chat
    client_group: global
    endpoint_groups: {us-east: us-east-1, eu-west: eu-west-1}
"""


def test_the_issue_contract_validates_with_one_mapping_per_provider():
    providers = parse_policy(CONTRACT).providers
    assert [r.instance_name for r in providers.route53_list] == ["route53:llm.example.com"]
    assert providers.route53_list[0].endpoint_url == "http://127.0.0.1:5000"
    assert [c.instance_name for c in providers.cloud_dns_list] == ["cloud_dns:my-project/llm-zone"]
    assert providers.cloud_dns_list[0].api_endpoint == "http://127.0.0.1:8089"
    assert [g.instance_name for g in providers.global_accelerator_list] == ["global_accelerator:def"]


@pytest.mark.parametrize(
    ("old", "new", "check"),
    [
        # A hosted zone given by id hides its name, so no service can be called outside it.
        (
            ROUTE53,
            "  route53: {hosted_zone_id: Z1D633PJN98FT9, owner: team-a}\n",
            lambda p: [r.instance_name for r in p.providers.route53_list] == ["route53:Z1D633PJN98FT9"],
        ),
        # A zone is compared as DNS compares names: case and the final dot do not matter.
        (
            ROUTE53,
            "  route53: [{zone: LLM.Example.COM., owner: a}, {zone: llm.example.org, owner: b, enabled: false}]\n",
            lambda p: (
                [(r.instance_name, r.enabled) for r in p.providers.route53_list]
                == [("route53:llm.example.com", True), ("route53:llm.example.org", False)]
            ),
        ),
        # A country is more specific than a continent, so Route 53 answers the country's group.
        (
            "geo: {countries: [CH, LI], gcp_regions: [europe-west6]}",
            "geo: {countries: [CH, LI, FR]}",
            lambda p: (
                "FR" in p.client_group("ch").geo.countries and "EU" in p.client_group("eu").geo.continents
            ),
        ),
        # The default group may have geo too; it also gets Route 53's "*".
        (
            "geo: {gcp_regions: [us-east1, us-west1]}",
            "geo: {continents: [NA, SA, AF, AS, OC, AN], countries: [US]}",
            lambda p: len(p.client_group("global").geo.continents) == 6,
        ),
        (
            "    project: my-llm-project\n    managed_zone: llm-zone\n    owner: prod\n",
            "    - {project: my-llm-project, managed_zone: llm-zone, owner: prod}\n"
            "    - {project: other-project, managed_zone: llm-zone, owner: prod, api_endpoint: 'http://[::1]:8089/'}\n",
            lambda p: (
                [(c.instance_name, c.api_endpoint) for c in p.providers.cloud_dns_list]
                == [
                    ("cloud_dns:my-llm-project/llm-zone", None),
                    ("cloud_dns:other-project/llm-zone", "http://[::1]:8089"),
                ]
            ),
        ),
        (
            GA,
            "  global_accelerator:\n"
            "    - listener_arn: arn:aws:globalaccelerator::123456789012:accelerator/a/listener/eu1\n"
            "      service: embed\n"
            "      client_group: eu\n"
            "      endpoint_groups: {eu-west: eu-west-1}\n"
            "    - listener_arn: arn:aws:globalaccelerator::123456789012:accelerator/a/listener/us1\n"
            "      service: chat\n"
            "      client_group: global\n"
            "      endpoint_groups: {us-east: us-east-1, eu-west: eu-west-1}\n",
            lambda p: (
                [g.instance_name for g in p.providers.global_accelerator_list]
                == ["global_accelerator:eu1", "global_accelerator:us1"]
            ),
        ),
        (
            "providers:\n" + ROUTE53,
            "providers:\n  memory: true\n",
            lambda p: p.providers.route53_list == () and len(p.providers.cloud_dns_list) == 1,
        ),
    ],
)
def test_good_inputs(old, new, check):
    assert check(parse_policy(edited(old, new)))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # ---- geo
        (
            "continents: [EU]",
            "continents: [EUR]",
            "c.yaml:15:20: client_groups.0.geo.continents.0: must be one of 'AF', 'AN', 'AS', 'EU', 'NA', 'OC' "
            "or 'SA', got 'EUR'",
        ),
        (
            'countries: [GB, "NO"]',
            "countries: [GB, UK]",
            "c.yaml:16:23: client_groups.0.geo.countries.1: must be an assigned ISO 3166-1 alpha-2 country code "
            "in capitals, such as 'GB' (not 'UK'), 'CH' or 'US'; policies/schema.json lists all 249, got 'UK'",
        ),
        (
            'countries: [GB, "NO"]',
            "countries: [gb]",
            "c.yaml:16:19: client_groups.0.geo.countries.0: must be an",
        ),
        # Reserved, not assigned: ISO keeps XK and EU out of 3166-1.
        (
            'countries: [GB, "NO"]',
            "countries: [XK]",
            "c.yaml:16:19: client_groups.0.geo.countries.0: must be an",
        ),
        (
            'countries: [GB, "NO"]',
            "countries: [GB, NO]",
            'c.yaml:16:23: client_groups.0.geo.countries.1: YAML read this as a boolean: quote the country code, e.g. "NO", got False',
        ),
        (
            "gcp_regions: [europe-west1, europe-north1]",
            "gcp_regions: [europe-west1, Europe-West1]",
            "c.yaml:17:35: client_groups.0.geo.gcp_regions.1: String should match pattern '^[a-z]+-[a-z]+[0-9]+$', got 'Europe-West1'",
        ),
        (
            'countries: [GB, "NO"]',
            'countries: [GB, "NO", GB]',
            "c.yaml:16:29: client_groups.0.geo.countries.2: 'GB' is listed twice",
        ),
        (
            "geo: {countries: [CH, LI], gcp_regions: [europe-west6]}",
            "geo: {countries: [CH, GB], gcp_regions: [europe-west6]}",
            "c.yaml:21:27: client_groups.1.geo.countries.1: 'GB' is in the geo of client groups 'eu' and 'ch'; "
            "a resolver's location must lead to one group",
        ),
        (
            "geo: {gcp_regions: [us-east1, us-west1]}",
            "geo: {continents: [NA, EU]}",
            "c.yaml:24:28: client_groups.2.geo.continents.1: 'EU' is in the geo of client groups 'eu' and 'global'",
        ),
        (
            "geo: {gcp_regions: [us-east1, us-west1]}",
            "geo: {gcp_regions: [us-east1, europe-west6]}",
            "c.yaml:24:35: client_groups.2.geo.gcp_regions.1: 'europe-west6' is in the geo of client groups 'ch' and 'global'",
        ),
        (
            "geo: {gcp_regions: [us-east1, us-west1]}",
            "geo: {}",
            "c.yaml:24:10: client_groups.2.geo: names no place; give continents, countries or gcp_regions",
        ),
        (
            "geo: {gcp_regions: [us-east1, us-west1]}",
            "geo: {regions: [us-east1]}",
            "c.yaml:24:11: client_groups.2.geo.regions: unknown field",
        ),
        # ---- route53
        (
            "embed.llm.example.org",
            "embed.llm.example.net",
            "c.yaml:34:5: services.1.dns_name: 'embed.llm.example.net' is outside providers.route53.zone "
            "['llm.example.com', 'llm.example.org']",
        ),
        (
            ROUTE53,
            "  route53: {zone: llm.example.com, owner: prod}\n",
            "c.yaml:34:5: services.1.dns_name: 'embed.llm.example.org' is outside providers.route53.zone 'llm.example.com'",
        ),
        # A zone's name is a suffix of labels, not of characters.
        (
            ROUTE53,
            "  route53: [{zone: llm.example.org, owner: a}, {zone: m.example.com, owner: b}]\n",
            "c.yaml:29:5: services.0.dns_name: 'chat.llm.example.com' is outside providers.route53.zone "
            "['llm.example.org', 'm.example.com']",
        ),
        (
            "{zone: llm.example.com, owner: prod}",
            "{zone: llm.example.com, hosted_zone_id: Z1, owner: prod}",
            "c.yaml:41:7: providers.route53.0: give exactly one of zone and hosted_zone_id",
        ),
        (
            "{zone: llm.example.com, owner: prod}",
            "{owner: prod}",
            "c.yaml:41:7: providers.route53.0: give exactly one of zone and hosted_zone_id",
        ),
        (
            "    - {zone: llm.example.org, owner: prod, max_delete_share: 0.5}\n",
            "    - {zone: llm.example.org, owner: prod, max_delete_share: 0.5}\n    - {zone: LLM.example.com., owner: b}\n",
            "c.yaml:43:7: providers.route53.2: 'route53:llm.example.com' is also providers.route53.0; "
            "each instance is named once",
        ),
        (
            "{zone: llm.example.com, owner: prod}",
            "{zone: llm.example.com, owner: Prod}",
            "c.yaml:41:38: providers.route53.0.owner: String should match pattern '^[a-z0-9][a-z0-9-]{0,31}$', got 'Prod'",
        ),
        (
            "{zone: llm.example.com, owner: prod}",
            "{zone: llm.example.com}",
            "c.yaml:41:7: providers.route53.0.owner: required field is missing",
        ),
        (
            "max_delete_share: 0.5}",
            "max_delete_share: 1.5}",
            "c.yaml:42:62: providers.route53.1.max_delete_share: Input should be less than or equal to 1, got 1.5",
        ),
        (
            "{zone: llm.example.com, owner: prod}",
            "{zone: llm.example.com, owner: prod, endpoint_url: 'ftp://127.0.0.1:5000'}",
            "c.yaml:41:58: providers.route53.0.endpoint_url: must be an http:// or https:// URL with a host, "
            "got 'ftp://127.0.0.1:5000'",
        ),
        (
            ROUTE53,
            "  route53: {hosted_zone_id: /hostedzone/Z1, owner: prod}\n",
            "c.yaml:40:29: providers.route53.hosted_zone_id: String should match pattern '^[A-Z0-9]{1,32}$', "
            "got '/hostedzone/Z1'",
        ),
        (
            ROUTE53,
            "  route53: {zone: llm.example.com, ownr: prod}\n",
            (
                "c.yaml:40:12: providers.route53.owner: required field is missing",
                "c.yaml:40:36: providers.route53.ownr: unknown field",
            ),
        ),
        (
            ROUTE53,
            "  route53: 3\n",
            "c.yaml:40:12: providers.route53: must be a mapping or a list of mappings, got 3",
        ),
        (
            ROUTE53,
            "  route53: []\n",
            "c.yaml:40:12: providers.route53: Tuple should have at least 1 item after validation, not 0",
        ),
        # ---- cloud_dns
        (
            "project: my-llm-project",
            "project: 1project",
            "c.yaml:44:14: providers.cloud_dns.project: String should match pattern '^[a-z][a-z0-9-]{4,28}[a-z0-9]$', got '1project'",
        ),
        (
            "managed_zone: llm-zone",
            "managed_zone: llm.zone",
            "c.yaml:45:19: providers.cloud_dns.managed_zone: String should match pattern '^[a-z][a-z0-9-]{0,62}$', got 'llm.zone'",
        ),
        (
            "    managed_zone: llm-zone\n    owner: prod\n",
            "    managed_zone: llm-zone\n    owner: prod\n    api_endpoint: localhost:8089\n",
            "c.yaml:47:19: providers.cloud_dns.api_endpoint: must be an http:// or https:// URL with a host",
        ),
        (
            "    project: my-llm-project\n    managed_zone: llm-zone\n    owner: prod\n",
            "    - {project: my-llm-project, managed_zone: llm-zone, owner: prod}\n"
            "    - {project: my-llm-project, managed_zone: llm-zone, owner: test}\n",
            "c.yaml:45:7: providers.cloud_dns.1: 'cloud_dns:my-llm-project/llm-zone' is also providers.cloud_dns.0",
        ),
        # ---- global_accelerator
        (
            "listener/0123vxyz",
            "listener",
            "c.yaml:48:19: providers.global_accelerator.listener_arn: String should match pattern "
            "'^arn:aws:globalaccelerator::[0-9]{12}:accelerator/",
        ),
        (
            "globalaccelerator::123456789012:",
            "globalaccelerator::1234:",
            "c.yaml:48:19: providers.global_accelerator.listener_arn: String should match pattern",
        ),
        (
            "    service: chat\n    client_group: global",
            "    service: talk\n    client_group: global",
            "c.yaml:49:5: providers.global_accelerator.service: unknown service 'talk'; defined: ['chat', 'embed']",
        ),
        (
            "    client_group: global\n",
            "    client_group: world\n",
            "c.yaml:50:5: providers.global_accelerator.client_group: unknown client group 'world'; "
            "defined: ['ch', 'eu', 'global']",
        ),
        (
            "us-west: us-west-2",
            "mars: us-west-2",
            "c.yaml:51:43: providers.global_accelerator.endpoint_groups.mars: unknown region; "
            "defined: ['ch-zurich', 'eu-west', 'us-east', 'us-west']",
        ),
        (
            "    service: chat\n    client_group: global\n    endpoint_groups: " + GA_GROUPS,
            "    service: embed\n    client_group: global\n    endpoint_groups: {eu-west: eu-west-1, us-west: us-west-2}",
            "c.yaml:51:43: providers.global_accelerator.endpoint_groups.us-west: does not serve service 'embed'; "
            "it runs in ['eu-west', 'us-east']",
        ),
        # Residency: a group's accelerator may only lead to regions the group may use.
        (
            "    client_group: global\n    endpoint_groups: " + GA_GROUPS,
            "    client_group: ch\n    endpoint_groups: {eu-west: eu-west-1, ch-zurich: eu-central-2, us-east: us-east-1}",
            "c.yaml:51:68: providers.global_accelerator.endpoint_groups.us-east: jurisdiction 'US' is not allowed "
            "for client group 'ch' (['CH', 'EU']); allowed regions: ['eu-west', 'ch-zurich']",
        ),
        (
            "us-west: us-west-2",
            "us-west: us-east-1",
            (
                "c.yaml:51:23: providers.global_accelerator.endpoint_groups.us-east: AWS region 'us-east-1' is given "
                "to two regions; a listener has one endpoint group per AWS region",
                "c.yaml:51:43: providers.global_accelerator.endpoint_groups.us-west: AWS region 'us-east-1' is given "
                "to two regions; a listener has one endpoint group per AWS region",
            ),
        ),
        (
            "eu-west: eu-west-1",
            "eu-west: eu-west",
            "c.yaml:51:72: providers.global_accelerator.endpoint_groups.eu-west: String should match pattern",
        ),
        (
            "    endpoint_groups: " + GA_GROUPS,
            "    endpoint_groups: {}",
            "c.yaml:51:22: providers.global_accelerator.endpoint_groups: Dictionary should have at least 1 item",
        ),
    ],
)
def test_bad_inputs_point_at_the_field(old, new, expected):
    wanted = (expected,) if isinstance(expected, str) else expected
    found = problems(edited(old, new))
    assert len(found) == len(wanted) and all(f.startswith(w) for f, w in zip(found, wanted, strict=True)), (
        found
    )


def test_the_issue_contract_with_a_bare_no_is_refused_with_the_fix():
    assert problems(CONTRACT.replace('[GB, CH, "NO"]', "[GB, CH, NO]")) == [
        'c.yaml:11:27: client_groups.0.geo.countries.2: YAML read this as a boolean: quote the country code, e.g. "NO", got False'
    ]


def test_country_codes_are_the_assigned_iso_set():
    assert len(ISO_COUNTRIES) == 249
    assert {"GB", "UA", "CH", "NO", "AQ", "SS", "BQ", "CW", "SX"} <= ISO_COUNTRIES
    # Reserved or exceptional, not assigned: Route 53 refuses them as countries.
    assert not {"UK", "EU", "XK", "AN", "YU", "CS"} & ISO_COUNTRIES


@pytest.mark.parametrize(
    ("name", "zone", "inside"),
    [
        ("chat.llm.example.com", "llm.example.com", True),
        ("llm.example.com.", "LLM.example.com", True),
        ("CHAT.LLM.EXAMPLE.COM", "llm.example.com.", True),
        ("chat.xllm.example.com", "llm.example.com", False),
        ("example.com", "llm.example.com", False),
    ],
)
def test_in_zone_compares_labels(name, zone, inside):
    assert in_zone(name, zone) is inside


def test_single_and_list_forms_read_alike():
    one = parse_policy(
        edited(ROUTE53, "  route53: {zone: example.org, owner: prod}\n").replace(
            ".example.com", ".example.org"
        )
    )
    many = parse_policy(
        edited(ROUTE53, "  route53: [{zone: example.org, owner: prod}]\n").replace(
            ".example.com", ".example.org"
        )
    )
    assert (
        one.providers.route53_list
        == many.providers.route53_list
        == (Route53Settings(zone="example.org", owner="prod"),)
    )


def test_a_group_whose_record_label_would_not_fit_is_refused():
    long_group = "g" * 56  # a valid name, but "_cp-prod-" + it is 65 characters
    text = (
        CONTRACT.replace("  - {name: global,", f"  - {{name: {long_group},")
        .replace("default_client_group: global", f"default_client_group: {long_group}")
        .replace("client_group: global", f"client_group: {long_group}")
    )
    found = problems(text)
    assert len(found) == 2  # one per cloud DNS provider, at the group's name
    assert all(":14:" in p and "65 characters; a DNS label holds 63" in p for p in found), found
