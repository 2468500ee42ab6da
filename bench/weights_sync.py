"""Model-weight sync against `aws s3 sync`, in one run against one moto_server (issue 7).

Run from the project root: python -m bench.weights_sync [--size-mib 1024] [--shards 8] [--files 1000]
[--rounds 3].
Prints figures; asserts nothing beyond each run succeeding. Needs moto_server (pip's moto[server]) and PyPI
once: awscli pins botocore, so it lives in its own venv (~/.cache/controlplane-bench/awscli), made on the
first run and reused; exit 2 when it cannot be installed.

Set-up: a source bucket in us-east-1 holds a published model version (random shards, their manifest.json
computed as the bytes were generated, as a publisher would); each destination is a fresh bucket in
eu-west-1. Both syncs run as child processes with the same environment (AWS_ENDPOINT_URL, dummy
credentials): `aws s3 sync --only-show-errors` over the version's folder, and `controlplane sync` (the CLI,
not sync_model in this process: it pays its own interpreter start and imports as `aws` does, the SIGKILL
figure needs a child process anyway, and this process's polling shares no event loop or GIL with it).
Concurrency as shipped: awscli's 10 requests, the policy's default sync.concurrency of 8.

1. Copy: the model, timed each way; ours also reads every byte back from the destination and checks it
   against the manifest's SHA-256, then writes the marker and promotes CURRENT. Goal: >= 1.5x faster.
   `aws s3 sync` runs twice: with its defaults (above 8 MiB, a multipart copy of 8 MiB UploadPartCopy
   parts) and with multipart_threshold = 5GB (one CopyObject per file). Read the ratios with care: moto
   (5.x) serves every UploadPartCopy, like every ranged GET, by reading the whole source object and
   slicing it, so on moto a multipart copy costs parts x object size, which S3 does not. aws's defaults
   and our resumable copy (UploadPartCopy, above weights.buckets.RESUMABLE_COPY) pay that; aws's one
   request per file does not. `--rounds` interleaved rounds of the three; medians, every run in brackets.
2. No-op re-sync: `--files` small files synced once, then again with nothing changed: wall time of the
   whole CLI and bytes copied (goal: 0 bytes, under 2 s); `aws s3 sync` doing the same, for scale.
3. SIGKILL at 50 %: the destination is polled (objects, plus the parts of multipart uploads in progress)
   until half the model's bytes are there, the sync is killed, the destination is left to settle (moto
   finishes requests already received), and what it holds then is `landed`. The rerun must move at least
   `total - landed`; anything beyond that it moved again although it was already there:
   re-copied = rerun's bytes_copied - (total - landed), as a share of the total. Goal: under 10 %.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.config import Config

from chaos.emulators import moto_on_path
from controlplane.weights.buckets import PART_SIZE
from controlplane.weights.manifest import FileEntry, Manifest, current_key, file_key, manifest_key

AWSCLI_VENV = Path.home() / ".cache" / "controlplane-bench" / "awscli"
SOURCE = "models-origin"
PREFIX = "models"
MODEL, SMALL_MODEL, VERSION = "bench-llm", "bench-small", "v1"
PART = 8 * 1024 * 1024  # the fill's multipart part: awscli's default chunk size
MIB = 1024 * 1024
POLL = 0.05
SETTLE = 0.5
SYNC_LIMIT = 3600.0  # one child sync: generous, moto on two cores is slow, but a hang must end the bench

CLI = "import sys; from controlplane.cli import main; sys.exit(main())"
ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def awscli() -> Path:
    """`aws` from the bench's own venv, made on first use; exit 2 when pip cannot install it."""
    aws = AWSCLI_VENV / "bin" / "aws"
    if aws.exists():
        return aws
    print(f"installing awscli into {AWSCLI_VENV} (it pins botocore: never into the project's environment)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(AWSCLI_VENV)], check=True)
        subprocess.run(
            [str(AWSCLI_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "awscli"], check=True
        )
    except subprocess.CalledProcessError as exc:
        print(f"cannot install awscli ({exc}); is PyPI reachable?", file=sys.stderr)
        sys.exit(2)
    return aws


def client() -> Any:
    return boto3.session.Session().client(
        "s3", config=Config(retries={"mode": "standard", "max_attempts": 3})
    )


def make_bucket(s3: Any, name: str, region: str) -> None:
    config = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=name, **config)


def random_pieces(size: int) -> Iterator[bytes]:
    for offset in range(0, size, PART):
        yield os.urandom(min(PART, size - offset))


def upload_random(s3: Any, key: str, size: int) -> str:
    """`size` random bytes as `key` in the source, never more than one part in memory; their sha256."""
    sha = hashlib.sha256()
    if size <= PART:
        data = os.urandom(size)
        sha.update(data)
        s3.put_object(Bucket=SOURCE, Key=key, Body=data)
        return sha.hexdigest()
    upload = s3.create_multipart_upload(Bucket=SOURCE, Key=key)["UploadId"]
    parts = []
    for number, piece in enumerate(random_pieces(size), start=1):
        sha.update(piece)
        reply = s3.upload_part(Bucket=SOURCE, Key=key, UploadId=upload, PartNumber=number, Body=piece)
        parts.append({"PartNumber": number, "ETag": reply["ETag"]})
    s3.complete_multipart_upload(Bucket=SOURCE, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    return sha.hexdigest()


def publish(s3: Any, model: str, sizes: dict[str, int], workers: int) -> Manifest:
    """The version's files, random, then its manifest (what a publisher leaves in the source)."""

    def one(path: str) -> FileEntry:
        key = file_key(PREFIX, model, VERSION, path)
        return FileEntry(path=path, size=sizes[path], sha256=upload_random(s3, key, sizes[path]))

    with ThreadPoolExecutor(workers) as pool:
        files = tuple(pool.map(one, sorted(sizes)))
    manifest = Manifest(model=model, version=VERSION, files=files)
    s3.put_object(Bucket=SOURCE, Key=manifest_key(PREFIX, model, VERSION), Body=manifest.encode())
    return manifest


def write_policy(folder: Path, model: str, dest: str, source: str = f"s3://{SOURCE}/{PREFIX}") -> Path:
    policy = {
        "version": 1,
        "regions": [
            {"name": "eu-west", "endpoint": "http://10.1.0.10:8000", "jurisdiction": "EU", "bucket": dest}
        ],
        "client_groups": [{"name": "world", "allowed_jurisdictions": ["EU"]}],
        "default_client_group": "world",
        "models": [{"name": model, "source": source, "version": VERSION}],
        "services": [
            {"name": "chat", "dns_name": "chat.example.com", "regions": ["eu-west"], "model": model}
        ],
    }
    path = folder / f"{model}-{dest.split('/')[2]}.yaml"
    path.write_text(yaml.safe_dump(policy), encoding="utf-8")
    return path


def run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run to the end (`env` added to this process's); seconds and stdout. A failed sync ends the bench:
    its figures would mean nothing."""
    start = time.perf_counter()
    child_env = None if env is None else os.environ | env
    done = subprocess.run(command, capture_output=True, text=True, timeout=SYNC_LIMIT, env=child_env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return elapsed, done.stdout


def ours(policy: Path, model: str) -> list[str]:
    # This interpreter, importing from the working directory (the project root), rather than the installed
    # `controlplane` script: that one runs whichever checkout was installed, not necessarily this one.
    return [sys.executable, "-c", CLI, "sync", "--policy", str(policy), "--model", model]


def bytes_copied(output: str) -> int:
    found = re.findall(r"(\d+) bytes copied", output)
    if len(found) != 1:
        sys.exit(f"cannot read bytes copied from controlplane sync's output:\n{output}")
    return int(found[0])


def folder_url(bucket: str, model: str) -> str:
    return f"s3://{bucket}/{PREFIX}/{model}/{VERSION}/"


def aws_sync(aws: Path, model: str, dest: str) -> list[str]:
    return [str(aws), "s3", "sync", "--only-show-errors", folder_url(SOURCE, model), folder_url(dest, model)]


def held(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    """Key -> bytes under `prefix`: whole objects, and for a key without one, the parts its multipart
    uploads in progress hold."""
    objects: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    parts: dict[str, int] = {}
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", []):
            key = upload["Key"]
            for listed in s3.get_paginator("list_parts").paginate(
                Bucket=bucket, Key=key, UploadId=upload["UploadId"]
            ):
                parts[key] = parts.get(key, 0) + sum(p["Size"] for p in listed.get("Parts", []))
    return objects | {k: v for k, v in parts.items() if k not in objects}


def landed(s3: Any, bucket: str, manifest: Manifest) -> int:
    """Bytes of the manifest's files the destination holds, whole or in recorded parts."""
    keys = {file_key(PREFIX, manifest.model, VERSION, f.path) for f in manifest.files}
    return sum(size for key, size in held(s3, bucket, f"{PREFIX}/{manifest.model}/").items() if key in keys)


def settled(s3: Any, bucket: str, manifest: Manifest) -> int:
    """`landed` once two looks SETTLE apart agree: moto completes requests a killed client had sent."""
    before = landed(s3, bucket, manifest)
    while True:
        time.sleep(SETTLE)
        now = landed(s3, bucket, manifest)
        if now == before:
            return now
        before = now


def empty(s3: Any, bucket: str) -> None:
    """Drop a measured destination's objects and uploads: moto holds everything in memory."""
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for upload in page.get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def current(s3: Any, bucket: str, model: str) -> str:
    return str(s3.get_object(Bucket=bucket, Key=current_key(PREFIX, model))["Body"].read().decode())


def rate(size: int, seconds: float) -> str:
    return f"{size / MIB / seconds:7.1f} MiB/s"


def median_line(label: str, seconds: list[float], note: str, size: int | None = None) -> str:
    runs = ", ".join(f"{t:.2f}" for t in seconds)
    speed = f"  {rate(size, statistics.median(seconds))}" if size is not None else ""
    return f"  {label:22s}{statistics.median(seconds):7.2f} s{speed}  {note}  [{runs}]"


def copy_figures(s3: Any, aws: Path, scratch: Path, manifest: Manifest, rounds: int) -> None:
    total = sum(f.size for f in manifest.files)
    single = scratch / "aws-one-copy-per-file.ini"
    single.write_text("[default]\ns3 =\n  multipart_threshold = 5GB\n", encoding="utf-8")
    make_bucket(s3, "copy-dest", "eu-west-1")
    policy = write_policy(scratch, MODEL, "s3://copy-dest/models")
    parts: list[float] = []
    whole: list[float] = []
    our: list[float] = []
    moved: set[int] = set()
    # Interleaved rounds, so that whatever else loads the machine weighs on all three alike.
    for _ in range(rounds):
        for times, env in ((parts, None), (whole, {"AWS_CONFIG_FILE": str(single)})):
            seconds, _ = run(aws_sync(aws, MODEL, "copy-dest"), env)
            if landed(s3, "copy-dest", manifest) != total:
                sys.exit("aws s3 sync did not copy the whole model")
            times.append(seconds)
            empty(s3, "copy-dest")
        seconds, output = run(ours(policy, MODEL))
        if current(s3, "copy-dest", MODEL) != VERSION:
            sys.exit("controlplane sync did not promote the version")
        our.append(seconds)
        moved.add(bytes_copied(output))
        empty(s3, "copy-dest")
    print(
        f"copy {total / MIB:.0f} MiB in {len(manifest.files)} files, us-east-1 -> eu-west-1, median of {rounds}:"
    )
    print(median_line("aws s3 sync, defaults", parts, "(multipart: UploadPartCopy, 8 MiB parts)", total))
    print(median_line("aws s3 sync, one copy", whole, "(multipart_threshold 5GB: CopyObject)", total))
    print(
        median_line(
            "controlplane sync",
            our,
            f"(server-side copy, every byte read back, SHA-256 checked; bytes copied {sorted(moved)})",
            total,
        )
    )
    ratio = statistics.median(parts) / statistics.median(our)
    print(f"  ours faster by        {ratio:7.2f}x than aws's defaults (goal >= 1.5x)")
    ratio = statistics.median(whole) / statistics.median(our)
    print(f"                        {ratio:7.2f}x than aws copying each file in one request")


def noop_figures(s3: Any, aws: Path, scratch: Path, files: int, rounds: int) -> None:
    sizes = {f"tokenizer/part-{i:05d}.json": 1024 + (i * 7919) % (15 * 1024) for i in range(files)}
    publish(s3, SMALL_MODEL, sizes, workers=8)
    make_bucket(s3, "small-dest", "eu-west-1")
    make_bucket(s3, "small-aws", "eu-west-1")
    policy = write_policy(scratch, SMALL_MODEL, "s3://small-dest/models")
    first, _ = run(ours(policy, SMALL_MODEL))
    run(aws_sync(aws, SMALL_MODEL, "small-aws"))
    again: list[float] = []
    moved: set[int] = set()
    aws_again: list[float] = []
    for _ in range(rounds):
        seconds, output = run(ours(policy, SMALL_MODEL))
        again.append(seconds)
        moved.add(bytes_copied(output))
        aws_again.append(run(aws_sync(aws, SMALL_MODEL, "small-aws"))[0])
    print(f"re-sync, nothing changed, {files} files, median of {rounds} (first copy of ours: {first:.2f} s):")
    print(median_line("controlplane sync", again, f"bytes copied {sorted(moved)}  (goal: 0 bytes, < 2 s)"))
    print(median_line("aws s3 sync", aws_again, "(for scale)"))


def folder_copy(s3: Any, manifest: Manifest, root: Path) -> str:
    """The source's model version in a local folder (file://), for a copy that streams in parts."""
    for entry in manifest.files:
        path = root / manifest.model / VERSION / entry.path
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(SOURCE, file_key(PREFIX, manifest.model, VERSION, entry.path), str(path))
    (root / manifest.model / VERSION / "manifest.json").write_bytes(manifest.encode())
    return root.as_uri()


def kill_figures(s3: Any, scratch: Path, manifest: Manifest, source: str, how: str, bucket: str) -> None:
    total = sum(f.size for f in manifest.files)
    make_bucket(s3, bucket, "eu-west-1")
    command = ours(write_policy(scratch, MODEL, f"s3://{bucket}/models", source), MODEL)
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = 0
    while child.poll() is None:
        seen = landed(s3, bucket, manifest)
        if seen >= total / 2:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(POLL)
    if child.wait() != -signal.SIGKILL:
        print(f"SIGKILL at 50 %: the sync ended (exit {child.returncode}) before half the bytes were seen")
        return
    held_then = settled(s3, bucket, manifest)
    seconds, output = run(command)
    moved = bytes_copied(output)
    again = max(0, moved - (total - held_then))
    if current(s3, bucket, MODEL) != VERSION:
        sys.exit("the rerun did not promote the version")
    print(f"SIGKILL at 50 %, then rerun ({how}):")
    print(
        f"  killed when the poll saw {seen / total:6.1%} of the bytes; {held_then / total:6.1%} there once settled"
    )
    print(f"  rerun: {seconds:.2f} s, {moved} bytes copied, {total - held_then} of them missing at the kill")
    print(f"  re-copied            {again / total:7.1%} of {total} bytes  (goal < 10 %)")
    empty(s3, bucket)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="the model's size")
    parser.add_argument("--shards", type=int, default=8, help="files the model is cut into")
    parser.add_argument("--files", type=int, default=1000, help="small files for the no-op re-sync")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each timed sync; medians are printed")
    args = parser.parse_args()
    aws = awscli()
    os.environ.update(ENVIRONMENT)
    with moto_on_path() as url, tempfile.TemporaryDirectory() as scratch:
        os.environ["AWS_ENDPOINT_URL"] = url
        s3 = client()
        make_bucket(s3, SOURCE, "us-east-1")
        size = args.size_mib * MIB
        sizes = {
            f"model-{i:05d}-of-{args.shards:05d}.safetensors": size // args.shards
            + (i == args.shards) * (size % args.shards)
            for i in range(1, args.shards + 1)
        }
        start = time.perf_counter()
        manifest = publish(s3, MODEL, sizes, workers=2)
        print(
            f"source filled: {args.size_mib} MiB in {args.shards} shards, {time.perf_counter() - start:.1f} s"
        )
        copy_figures(s3, aws, Path(scratch), manifest, args.rounds)
        noop_figures(s3, aws, Path(scratch), args.files, args.rounds)
        kill_figures(
            s3, Path(scratch), manifest, f"s3://{SOURCE}/{PREFIX}", "S3 -> S3, server-side", "kill-s3"
        )
        local = folder_copy(s3, manifest, Path(scratch) / "source")
        kill_figures(
            s3,
            Path(scratch),
            manifest,
            local,
            f"file -> S3, streamed in {PART_SIZE // MIB} MiB parts",
            "kill-file",
        )


if __name__ == "__main__":
    main()
