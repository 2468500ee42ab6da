"""The inference probe: a real streamed chat completion, timed to the first token, model id checked."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from controlplane.policy import ProbeSettings, Region
from probes.http import PROBE_ERRORS, Clock, RefusedBody, describe_error, out_of_resources, refuse_encoded
from probes.observation import Observation, ProbeKind

# The policy allows max_tokens up to 4096 and a vLLM chunk without logprobs is 250-400 bytes, so the
# longest honest stream stays under 2 MB. Lines are parsed as they come and dropped, so this cap bounds how
# long an endless stream of valid chunks keeps a probe parsing, not memory.
INFERENCE_STREAM_CAP = 4 * 1024 * 1024
# One SSE line is one chunk of JSON, a few hundred bytes; 64 KiB fits a chunk batching many tokens. This is
# what a line without a newline may buffer before the probe gives up on it.
INFERENCE_LINE_CAP = 64 * 1024


class StreamReading:
    """What an OpenAI-style SSE stream has shown so far, fed one line at a time as it arrives."""

    __slots__ = ("done", "error", "first_at", "last_at", "model", "tokens")

    def __init__(self) -> None:
        self.tokens = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.model: str | None = None
        self.error: str | None = None
        self.done = False

    def feed(self, line: bytes | bytearray, at: float) -> None:
        if not line.startswith(b"data:"):
            return  # blank separators, comments, event:/id: fields
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(data)
        except RecursionError:
            raise ValueError("stream chunk nested too deeply") from None
        if not isinstance(chunk, dict):
            raise ValueError("stream chunk is not a JSON object")
        if "error" in chunk:
            # vLLM reports a failure after the 200 status as an error event inside the stream.
            self.error = f"error in stream: {_error_message(chunk['error'])}"
            self.done = True
            return
        if self.model is None and isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            # Reasoning models stream their thinking first; it is output all the same for timing.
            if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"):
                # One chunk is counted as one token; a server batching tokens per chunk undercounts the rate.
                self.tokens += 1
                self.last_at = at
                if self.first_at is None:
                    self.first_at = at

    def verdict(self, expected_model: str | None) -> str | None:
        """None when the completion proves the region serves; else why not."""
        if self.error is not None:
            return self.error
        if self.tokens == 0:
            return "stream ended without a token"
        if expected_model and self.model != expected_model:
            return f"served model {self.model!r}, expected {expected_model!r}"
        return None


async def read_stream(content: aiohttp.StreamReader, stream: StreamReading) -> None:
    """Feed `stream` line by line until it is done or the body ends; RefusedBody past either cap.

    Lines are split here rather than by aiohttp's readline, whose own limit varies across versions and
    raises an exception that is not a ClientError.
    """
    pending = bytearray()
    total = 0
    while chunk := await content.readany():
        total += len(chunk)
        if total > INFERENCE_STREAM_CAP:
            raise RefusedBody(f"stream over {INFERENCE_STREAM_CAP} bytes")
        pending += chunk
        lines: list[bytearray] = []
        # Only new bytes are searched for a newline, so a line arriving byte by byte costs linear time.
        if b"\n" in chunk:
            *lines, pending = pending.split(b"\n")
        if len(pending) > INFERENCE_LINE_CAP or any(len(line) > INFERENCE_LINE_CAP for line in lines):
            raise RefusedBody(f"stream line over {INFERENCE_LINE_CAP} bytes")
        at = time.perf_counter()
        for line in lines:
            stream.feed(line, at)
            if stream.done:
                return
    stream.feed(pending, time.perf_counter())


def _error_message(error: Any) -> str:
    message = error.get("message") if isinstance(error, dict) else error
    return str(message)[:80]


async def probe_inference(
    session: aiohttp.ClientSession, region: Region, settings: ProbeSettings, now: Clock = time.time
) -> Observation:
    """POST a streamed chat completion of max_tokens tokens; ok when tokens came from the expected model."""
    inference = settings.inference
    expected = region.model or inference.model or None
    payload: dict[str, Any] = {
        "messages": [{"role": "user", "content": inference.prompt}],
        "max_tokens": inference.max_tokens,
        "stream": True,
        "temperature": 0,
    }
    if expected:
        payload["model"] = expected
    stream = StreamReading()
    error: str | None = None
    inconclusive = False
    started = time.perf_counter()
    try:
        async with (
            asyncio.timeout(inference.timeout),
            # Redirects are not followed: a region must not pass on another's health.
            session.post(
                region.endpoint + "/v1/chat/completions",
                json=payload,
                ssl=settings.tls_verify,
                allow_redirects=False,
            ) as resp,
        ):
            if 300 <= resp.status < 400:
                error = f"redirected (HTTP {resp.status}), not followed"
            elif resp.status != 200:
                error = f"HTTP {resp.status}"
            else:
                refuse_encoded(resp)
                await read_stream(resp.content, stream)
    except PROBE_ERRORS as exc:
        error = describe_error(exc, inference.timeout)
        inconclusive = out_of_resources(exc)
    error = error or stream.verdict(expected)
    ttft = None if stream.first_at is None else stream.first_at - started
    rate = None
    if stream.first_at is not None and stream.last_at is not None and stream.last_at > stream.first_at:
        rate = (stream.tokens - 1) / (stream.last_at - stream.first_at)
    return Observation(
        region.name,
        ProbeKind.INFERENCE,
        error is None,
        now(),
        time.perf_counter() - started,
        error=error,
        inconclusive=inconclusive,
        ttft_s=ttft,
        tokens_per_s=rate,
        model=stream.model,
    )
