"""read_load over metric pages as vLLM, SGLang and TGI write them."""

from __future__ import annotations

import pytest

from probes.metrics import MAX_LOAD_LINES, read_load, read_page

VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.61
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.34
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 7.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 9.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 9.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.8
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="m"} 1234.0
"""

# vLLM before 0.10 named the KV-cache gauge after the GPU; some versions export both names.
VLLM_OLD = """\
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 7.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 1.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.25
"""

SGLANG = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="Qwen/Qwen2.5-7B-Instruct"} 6.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="Qwen/Qwen2.5-7B-Instruct"} 11.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="Qwen/Qwen2.5-7B-Instruct"} 0.83
# HELP sglang:gen_throughput The generation throughput (token/s).
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{model_name="Qwen/Qwen2.5-7B-Instruct"} 412.5
"""

TGI = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 5
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 16
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="0.5"} 3
tgi_request_duration_bucket{le="+Inf"} 4
tgi_request_duration_sum 2.2
tgi_request_duration_count 4
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            VLLM,
            (5.0, 5.0, 0.61, 1234.0, None),
        ),  # counts summed over engines; KV usage is the fullest engine's
        (VLLM_OLD, (7.0, 1.0, 0.25, None, None)),
        (
            VLLM_OLD
            + '# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name="m"} 0.3\n',
            (7.0, 1.0, 0.3, None, None),
        ),  # the current name wins over the deprecated one instead of adding to it
        (SGLANG, (11.0, 6.0, 0.83, None, None)),
        (TGI, (5.0, 16.0, None, None, None)),  # TGI exports no KV-cache gauge
    ],
    ids=["vllm", "vllm-old", "vllm-both-kv-names", "sglang", "tgi"],
)
def test_reads_queue_running_and_kv_cache(text: str, expected: tuple[float | None, ...]) -> None:
    assert read_load(text) == expected
    # The probe's path: only the wanted lines of the raw page reach the parser, with the same result.
    assert read_page(text.encode()) == expected


def test_page_reader_skips_lines_of_other_metrics_unparsed() -> None:
    other = 'junk_metric{label="unterminated 3\n# TYPE broken histogram\nbroken_bucket{le="x"} y\n'
    with pytest.raises(ValueError):
        read_load(other + VLLM)
    assert read_page((other + VLLM).encode()) == (5.0, 5.0, 0.61, 1234.0, None)


def test_page_reader_takes_only_whole_names_at_line_start() -> None:
    page = (
        "vllm:num_requests_waiting_by_priority 9\n"  # a longer name that starts with a wanted one
        'other{name="vllm:num_requests_waiting"} 8\n'  # a wanted name inside a label value
        "# HELP other mirrors vllm:num_requests_running 7\n"  # and inside another metric's help
        "  sglang:num_queue_reqs 4\n"  # indented, still a sample line
    )
    assert read_page(page.encode()) == (4.0, None, None, None, None)


def test_page_reader_refuses_more_load_lines_than_a_server_has() -> None:
    page = "".join(f'vllm:num_requests_waiting{{engine="{i}"}} 1\n' for i in range(MAX_LOAD_LINES + 1))
    with pytest.raises(ValueError, match=f"more than {MAX_LOAD_LINES} lines"):
        read_page(page.encode())


def test_page_without_known_names_reads_as_nothing() -> None:
    nothing = (None, None, None, None, None)
    assert read_load("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 12.5\n") == nothing
    assert read_load("") == nothing


def test_untyped_page_and_not_a_number_values() -> None:
    text = 'vllm:num_requests_waiting{model_name="a"} 2\nvllm:num_requests_waiting{model_name="b"} NaN\n'
    assert read_load(text) == (2.0, None, None, None, None)


def test_malformed_page_raises_value_error() -> None:
    with pytest.raises(ValueError):
        read_load('vllm:num_requests_waiting{model_name="a" 3\n')


# Counters as prometheus_client writes them (vLLM, the simulated regions): the family is typed without the
# _total suffix, and each counter has a _created sample beside it that is a timestamp, not a count.
VLLM_COUNTERS = """\
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{model_name="a"} 1000.0
vllm:generation_tokens_total{model_name="b"} 24.0
vllm:generation_tokens_created{model_name="a"} 1.7e+09
# TYPE vllm:request_success counter
vllm:request_success_total{finished_reason="stop",model_name="a"} 9.0
vllm:request_success_total{finished_reason="length",model_name="a"} 3.0
vllm:request_success_created{finished_reason="stop",model_name="a"} 1.7e+09
vllm:num_requests_waiting{model_name="a"} 0.0
"""

SGLANG_COUNTERS = """\
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="q"} 7.557572e+06
# TYPE sglang:num_requests_total counter
sglang:num_requests_total{model_name="q"} 30211.0
sglang:num_queue_reqs{model_name="q"} 2.0
"""

# TGI counts generated tokens only per request, in a histogram: its sum is the cumulative count.
TGI_COUNTERS = """\
# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_bucket{le="100"} 40
tgi_request_generated_tokens_bucket{le="+Inf"} 50
tgi_request_generated_tokens_sum 6210
tgi_request_generated_tokens_count 50
# TYPE tgi_request_success counter
tgi_request_success 50
tgi_queue_size 1
"""


@pytest.mark.parametrize(
    ("text", "tokens", "requests"),
    [(VLLM_COUNTERS, 1024.0, 12.0), (SGLANG_COUNTERS, 7.557572e06, 30211.0), (TGI_COUNTERS, 6210.0, 50.0)],
    ids=["vllm", "sglang", "tgi"],
)
def test_reads_output_token_and_request_counters(text: str, tokens: float, requests: float) -> None:
    for load in (read_load(text), read_page(text.encode())):
        assert (load.output_tokens, load.requests_ok) == (tokens, requests)


def test_counter_lines_count_toward_the_line_bound() -> None:
    # A page of nothing but counters is as hostile as one of gauges: the same bound holds.
    page = "".join(f'vllm:generation_tokens_total{{engine="{i}"}} 1\n' for i in range(MAX_LOAD_LINES + 1))
    with pytest.raises(ValueError, match=f"more than {MAX_LOAD_LINES} lines"):
        read_page(page.encode())


def test_page_reader_takes_whole_counter_names_only() -> None:
    page = (
        "vllm:generation_tokens_total_by_model 9\n"  # a longer name starting with a wanted one
        'vllm:generation_tokens_created{model_name="a"} 1.7e+09\n'  # the creation time, not a count
        "tgi_request_generated_tokens_count 5\n"  # requests, not tokens
        "vllm:generation_tokens_total 12\n"
    )
    assert read_page(page.encode()).output_tokens == 12.0
