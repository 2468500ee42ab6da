"""Issue 7's policy contract: region buckets, models, a service's model, sync settings, residency warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.cli import main
from controlplane.policy import (
    BucketUrl,
    PolicyError,
    SyncSettings,
    load_with_warnings,
    parse_bucket_url,
    parse_policy,
    parse_with_warnings,
    validate_files,
)
from tests.builders import DEMO

EXAMPLE = DEMO.parent / "examples" / "models.yaml"
TEXT = EXAMPLE.read_text(encoding="utf-8")
FORMS = "s3://bucket/prefix, gs://bucket/prefix or file:///absolute/path"
S3_NAME = "an S3 bucket name is 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit"
SEGMENTS = "a bucket URL's path has no empty, '.' or '..' segments"
VERSION = "is one path segment: no '/', no '..', not '.', no control characters"
RESERVED = "is not one of CURRENT, HISTORY, LEASE: the bucket keeps those beside the versions"


def edited(old: str, new: str) -> str:
    assert TEXT.count(old) == 1, old
    return TEXT.replace(old, new)


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "m.yaml")
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("url", "parsed", "canonical"),
    [
        ("s3://models-eu-west-1/models", BucketUrl("s3", "models-eu-west-1", "models"), None),
        ("s3://a.b-c/x/y/", BucketUrl("s3", "a.b-c", "x/y"), "s3://a.b-c/x/y"),
        ("s3://abc", BucketUrl("s3", "abc", ""), None),
        ("s3://abc/", BucketUrl("s3", "abc", ""), "s3://abc"),
        ("gs://my_bucket.example/w", BucketUrl("gs", "my_bucket.example", "w"), None),
        ("file:///srv/models", BucketUrl("file", "", "/srv/models"), None),
        ("file:///srv/models/", BucketUrl("file", "", "/srv/models"), "file:///srv/models"),
    ],
)
def test_good_bucket_urls(url: str, parsed: BucketUrl, canonical: str | None) -> None:
    assert parse_bucket_url(url) == parsed
    assert str(parsed) == (canonical or url)


def test_a_key_is_the_prefix_and_the_parts() -> None:
    assert parse_bucket_url("s3://abc/m").key("llama", "v1", "manifest.json") == "m/llama/v1/manifest.json"
    assert parse_bucket_url("s3://abc").key("llama", "CURRENT") == "llama/CURRENT"
    assert parse_bucket_url("file:///srv/m").key("llama", "CURRENT") == "/srv/m/llama/CURRENT"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://models/x", f"must be a bucket URL: {FORMS}"),
        ("file:relative", f"must be a bucket URL: {FORMS}"),
        ("S3://abc/x", f"must be a bucket URL: {FORMS}"),
        ("s3://Models/x", S3_NAME),
        ("s3://ab/x", S3_NAME),
        ("s3://" + "a" * 64, S3_NAME),
        ("s3://a..b/x", S3_NAME),
        ("s3://-abc/x", S3_NAME),
        ("s3://a_b/x", S3_NAME),
        ("s3://192.168.1.1/x", "a bucket name may not be an IP address"),
        ("s3://abc/a//b", SEGMENTS),
        ("s3://abc/a/../b", SEGMENTS),
        ("s3://abc/./b", SEGMENTS),
        ("s3://abc/a?x=1", "a bucket URL has no query or fragment"),
        ("gs://abc/a#f", "a bucket URL has no query or fragment"),
        ("gs://goog-x/w", "a GCS bucket name may not start with 'goog'"),
        ("gs://" + "a" * 64, "a GCS bucket name is 3-63 characters"),
        ("gs://Abc", "a GCS bucket name is 3-63 characters"),
        ("gs://" + "a" * 64 + ".b", "a GCS bucket name is 3-63 characters"),
        ("file://srv/models", "a file URL has no host: file:///absolute/path (three slashes)"),
        ("file:///", "a file URL names a folder other than /: file:///absolute/path"),
        ("file:///srv/../etc", SEGMENTS),
    ],
)
def test_bad_bucket_urls(url: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_bucket_url(url)
    assert str(info.value).startswith(reason)


def test_a_gcs_name_with_dots_may_be_long() -> None:
    name = ".".join(["a" * 63] * 3)
    assert parse_bucket_url(f"gs://{name}/w").bucket == name


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "bucket: s3://models-eu-west-1/models",
            "bucket: s3://Models/x",
            [f"m.yaml:11:13: regions.0.bucket: {S3_NAME}, got 's3://Models/x'"],
        ),
        (
            "bucket: file:///srv/models",
            "bucket: file://srv/models",
            [
                "m.yaml:19:13: regions.2.bucket: a file URL has no host: file:///absolute/path (three slashes), "
                "got 'file://srv/models'"
            ],
        ),
        (
            "source: s3://models-origin/models   #",
            "source: s3://models-origin/a//b   #",
            [f"m.yaml:26:13: models.0.source: {SEGMENTS}, got 's3://models-origin/a//b'"],
        ),
        (
            "    source: s3://models-origin/models\n    version",
            "    version",
            ["m.yaml:29:5: models.1.source: required field is missing"],
        ),
        (
            'version: "2026-11-01"',
            "version: 2026-11-01",
            [
                'm.yaml:27:14: models.0.version: YAML read this as a date: quote the version, e.g. "2026-11-01", '
                "got datetime.date(2026, 11, 1)"
            ],
        ),
        (
            'version: "v2"',
            "version: 1.10",
            [
                'm.yaml:31:14: models.1.version: YAML read this as a float: quote the version, e.g. "1.1", got 1.1'
            ],
        ),
        ('version: "v2"', 'version: "a/b"', [f"m.yaml:31:14: models.1.version: {VERSION}, got 'a/b'"]),
        ('version: "v2"', 'version: "v..2"', [f"m.yaml:31:14: models.1.version: {VERSION}, got 'v..2'"]),
        ('version: "v2"', 'version: "."', [f"m.yaml:31:14: models.1.version: {VERSION}, got '.'"]),
        *(
            (
                'version: "v2"',
                f'version: "{name}"',
                [f"m.yaml:31:14: models.1.version: {RESERVED}, got '{name}'"],
            )
            for name in ("CURRENT", "HISTORY", "LEASE", "Lease")
        ),
        (
            'version: "v2"',
            'version: ""',
            ["m.yaml:31:14: models.1.version: String should have at least 1 character, got ''"],
        ),
        (
            'version: "v2"',
            f'version: "{"v" * 129}"',
            [
                "m.yaml:31:14: models.1.version: String should have at most 128 characters, "
                f"got '{'v' * 79}… (131 characters)"
            ],
        ),
        (
            "    jurisdictions: [EU]",
            "    jurisdictions: []",
            [
                "m.yaml:28:20: models.0.jurisdictions: Tuple should have at least 1 item after validation, not 0"
            ],
        ),
        (
            "  - name: e5-large",
            "  - name: llama-8b",
            [
                "m.yaml:25:5: models.0.name: duplicate name 'llama-8b'",
                "m.yaml:29:5: models.1.name: duplicate name 'llama-8b'",
                "m.yaml:40:5: services.1.model: unknown model 'e5-large'; defined: ['llama-8b']",
            ],
        ),
        (
            "  - name: e5-large",
            "  - name: E5",
            [
                "m.yaml:29:11: models.1.name: String should match pattern '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$', got 'E5'"
            ],
        ),
        (
            "    model: e5-large",
            "    model: gpt",
            ["m.yaml:40:5: services.1.model: unknown model 'gpt'; defined: ['e5-large', 'llama-8b']"],
        ),
        (
            "    bucket: file:///srv/models\n",
            "",
            [f"m.yaml:16:5: regions.2: serves model(s) ['e5-large'] but has no bucket; give bucket: {FORMS}"],
        ),
        (
            "  interval: 300",
            "  interval: 0",
            ["m.yaml:42:13: sync.interval: Input should be greater than 0, got 0"],
        ),
        (
            "  interval: 300",
            "  interval: 86401",
            ["m.yaml:42:13: sync.interval: Input should be less than or equal to 86400, got 86401"],
        ),
        (
            "  concurrency: 8",
            "  concurrency: 65",
            ["m.yaml:43:16: sync.concurrency: Input should be less than or equal to 64, got 65"],
        ),
        (
            "  concurrency: 8",
            "  concurrency: 0",
            ["m.yaml:43:16: sync.concurrency: Input should be greater than or equal to 1, got 0"],
        ),
        ("sync:\n", "sync:\n  speed: 3\n", ["m.yaml:42:3: sync.speed: unknown field"]),
    ],
)
def test_errors_point_at_the_field(old: str, new: str, expected: list[str]) -> None:
    assert problems(edited(old, new)) == expected


# chat's model may be stored only in the EU; us-east is in the US.
CHAT_IN_US = edited("regions: [eu-west, eu-central]", "regions: [eu-west, us-east]")
CHAT_IN_US_WARNING = (
    "m.yaml:35:24: warning: services.0.regions.1: model 'llama-8b' may be stored only in ['EU'], not in "
    "'us-east' (jurisdiction 'US'): sync will not copy it there and 'us-east' gets no traffic for service 'chat'"
)


def test_serving_a_model_where_it_may_not_be_stored_warns() -> None:
    policy, warnings = parse_with_warnings(CHAT_IN_US, "m.yaml")
    assert [str(w) for w in warnings] == [CHAT_IN_US_WARNING]
    assert all(w.warning for w in warnings)
    llama = policy.model("llama-8b")
    assert [r.name for r in policy.model_regions(llama)] == ["eu-west", "us-east"]
    assert [llama.may_store_in(r.jurisdiction) for r in policy.model_regions(llama)] == [True, False]


def test_a_region_the_model_may_not_enter_needs_no_bucket() -> None:
    text = CHAT_IN_US.replace("    bucket: file:///srv/models\n", "").replace(
        "regions: [eu-west, us-east]\n    model: e5-large", "regions: [eu-west]\n    model: e5-large"
    )
    _, warnings = parse_with_warnings(text, "m.yaml")
    assert [str(w) for w in warnings] == [CHAT_IN_US_WARNING.replace(":35:", ":34:")]  # one line fewer


def test_validate_prints_warnings_and_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(CHAT_IN_US, encoding="utf-8")
    found = validate_files([path])
    assert [(p.line, p.column, p.warning) for p in found] == [(35, 24, True)]
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == CHAT_IN_US_WARNING.replace("m.yaml", str(path), 1) + "\n"
    assert out == "1 policy file(s) valid\n"


def test_validate_still_fails_on_errors_next_to_warnings(tmp_path: Path) -> None:
    warned, broken = tmp_path / "warned.yaml", tmp_path / "broken.yaml"
    warned.write_text(CHAT_IN_US, encoding="utf-8")
    broken.write_text(edited("  concurrency: 8", "  concurrency: 0"), encoding="utf-8")
    assert main(["validate", str(warned), str(broken)]) == 1


def test_the_example_parses_to_the_contract() -> None:
    policy, warnings = load_with_warnings(EXAMPLE)
    assert warnings == []
    assert [r.bucket_url for r in policy.regions] == [
        BucketUrl("s3", "models-eu-west-1", "models"),
        BucketUrl("gs", "models-eu-central", "weights"),
        BucketUrl("file", "", "/srv/models"),
    ]
    llama = policy.model("llama-8b")
    assert (llama.source_url, llama.version, llama.jurisdictions) == (
        BucketUrl("s3", "models-origin", "models"),
        "2026-11-01",
        ("EU",),
    )
    assert policy.model("e5-large").jurisdictions is None
    assert [s.model for s in policy.services] == ["llama-8b", "e5-large"]
    assert policy.sync == SyncSettings(interval=300, concurrency=8)


def test_existing_policies_are_unchanged() -> None:
    # The terraform examples' policies (issue 9) name buckets and models by design.
    with_weights = {EXAMPLE.name, "two-region.yaml", "eu-residency.yaml"}
    for path in [DEMO, *(DEMO.parent / "examples").glob("*.yaml")]:
        if path.name in with_weights:
            continue
        policy, warnings = load_with_warnings(path)
        assert warnings == []
        assert policy.models == ()
        assert all(r.bucket is None for r in policy.regions)
        assert all(s.model is None for s in policy.services)
        assert (policy.sync.interval, policy.sync.concurrency) == (300, 8)
