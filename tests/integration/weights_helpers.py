"""The model, buckets and policy the weight-sync tests share: a folder, moto_server and fake-gcs-server
buckets, and a policy of one EU (and optionally one US) region serving the model."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import boto3

from controlplane.policy import Policy, load_policy
from controlplane.weights.buckets import CHUNK, Bucket, open_bucket, whole

MODEL, VERSION = "llama", "v1"
FILES = {
    "config.json": b'{"layers": 32}\n',
    "shards/00001.bin": os.urandom(CHUNK + 4096),  # more than one part: the multipart write path
    "shards/00002.bin": os.urandom(70_000),
}


async def content(bucket: Bucket, key: str) -> bytes:
    return b"".join([chunk async for chunk in bucket.read(key)])


def s3_bucket(name: str, region: str = "eu-west-1") -> str:
    client = boto3.client("s3", region_name="us-east-1")
    config = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    client.create_bucket(Bucket=name, **config)  # type: ignore[arg-type]
    return f"s3://{name}/models"


def gcs_bucket() -> str:
    from google.cloud import storage  # type: ignore[import-untyped]

    name = f"models-{uuid.uuid4().hex[:12]}"
    storage.Client().create_bucket(name)
    return f"gs://{name}/weights"


def write_policy(
    tmp_path: Path, source: str, eu: str, us: str | None = None, jurisdictions: str | None = None
) -> Path:
    us_region = (
        f"  - {{name: us-east, endpoint: 'http://10.4.0.10:8000', jurisdiction: US, bucket: '{us}'}}\n"
    )
    text = (
        "version: 1\n"
        "regions:\n"
        f"  - {{name: eu-west, endpoint: 'http://10.1.0.10:8000', jurisdiction: EU, bucket: '{eu}'}}\n"
        + (us_region if us else "")
        + "client_groups:\n"
        "  - {name: world, allowed_jurisdictions: [EU, US]}\n"
        "default_client_group: world\n"
        "models:\n"
        f"  - {{name: {MODEL}, source: '{source}', version: '{VERSION}'"
        + (f", jurisdictions: [{jurisdictions}]" if jurisdictions else "")
        + "}\n"
        "services:\n"
        f"  - {{name: chat, dns_name: chat.example.com, regions: [eu-west{', us-east' if us else ''}], "
        f"model: {MODEL}}}\n"
        "sync: {concurrency: 2}\n"
    )
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


async def seed(url: str) -> Bucket:
    bucket = open_bucket(url)
    for path, data in FILES.items():
        await bucket.write(f"{MODEL}/{VERSION}/{path}", whole(data))
    return bucket


def the_policy(tmp_path: Path, source: str, eu: str) -> Policy:
    return load_policy(str(write_policy(tmp_path, source, eu)))
