"""The REST server and its client, over loopback: an in-process server on a tiny checkpoint, and a
two-process tensor-parallel server started through main.py."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time

import pytest

from nemo_llm.inference import InferenceEngine, SamplingParams
from nemo_llm.inference import server as server_module
from nemo_llm.inference.client import GenerationClient, ServerError, ServerUnavailable
from nemo_llm.inference.client import main as client_main
from nemo_llm.inference.server import GenerationServer, ServerLimits, _Command, follow
from nemo_llm.training.checkpoint import last_checkpoint_path
from tests.inference.serving import CONTEXT, PROMPTS, TINY_MODEL, start_server, stop_server

pytestmark = pytest.mark.usefixtures("one_thread")

LIMITS = ServerLimits(max_prompts=4, max_new_tokens=16, max_request_bytes=2048)
class Serving:
    """A GenerationServer answering in a background thread."""

    def __init__(self, engine: InferenceEngine, **options):
        self.server = GenerationServer(engine, SamplingParams(max_new_tokens=8), LIMITS, port=0, log_requests=False,
                                       **options)
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()
        self.client = GenerationClient(self.server.url, timeout=60)

    def close(self) -> None:
        self.server.stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def serving(engine):
    serving = Serving(engine)
    yield serving
    serving.close()


def raw_request(serving: Serving, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict, http.client.HTTPResponse]:
    """One request exactly as given (no Content-Length unless in headers); (status, JSON reply, response)."""
    connection = http.client.HTTPConnection(*serving.server.address, timeout=60)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response
    finally:
        connection.close()


def post_json(serving: Serving, body: bytes, path: str = "/generate", method: str = "POST"):
    return raw_request(serving, method, path, body, {"Content-Type": "application/json",
                                                     "Content-Length": str(len(body))})


def greedy(**overrides) -> SamplingParams:
    return SamplingParams(**{"max_new_tokens": 8, "greedy": True, **overrides})


# --- answers ------------------------------------------------------------------------------------------


def test_health_describes_the_model_and_the_limits(serving):
    assert serving.client.health() == {
        "status": "ok",
        "model": {"max_sequence_length": CONTEXT, "vocab_size": 257, "tensor_model_parallel_size": 1,
                  "pipeline_model_parallel_size": 1},
        "limits": {"max_prompts": 4, "max_new_tokens": 16, "max_request_bytes": 2048}}


def test_generate_returns_what_the_engine_generates(serving, engine):
    expected = engine.generate(PROMPTS, greedy(logprobs=True))
    assert serving.client.generate(PROMPTS, max_new_tokens=8, greedy=True, logprobs=True) == \
        [g.to_dict() for g in expected]
    sampled = engine.generate(PROMPTS[:2], SamplingParams(max_new_tokens=8, temperature=0.8, top_k=50, top_p=0.9,
                                                          repetition_penalty=1.3, seed=11, stop_on_eod=False))
    assert serving.client.generate(PROMPTS[:2], max_new_tokens=8, temperature=0.8, top_k=50, top_p=0.9,
                                   repetition_penalty=1.3, seed=11, stop_on_eod=False) == [g.to_dict() for g in sampled]
    # One "prompt", Megatron's names, and the server's defaults (max_new_tokens=8, sampled with seed 0).
    default = engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=8))[0].to_dict()
    assert serving.client.generate(PROMPTS[0]) == [default]
    assert serving.client.generate(PROMPTS[0], tokens_to_generate=8, random_seed=0) == [default]


def test_put_api_answers_megatron_clients(serving, engine):
    expected = engine.generate(PROMPTS[:2], greedy(max_new_tokens=5))
    status, reply, _ = post_json(serving, json.dumps({"prompts": PROMPTS[:2], "tokens_to_generate": 5,
                                                      "greedy": True}).encode(), "/api", "PUT")
    assert status == 200
    assert reply["text"] == [g.prompt + g.text for g in expected]
    assert reply["generations"] == [g.to_dict() for g in expected]


def test_stop_strings_end_generation(serving, engine):
    full = engine.generate(PROMPTS[:1], greedy(max_new_tokens=12))[0].text
    # A stop string the greedy text holds (not straddling an incomplete UTF-8 character).
    start = next(i for i in range(1, len(full) - 2) if "\ufffd" not in full[i:i + 2])
    stop = full[start:start + 2]
    [generation] = serving.client.generate(PROMPTS[0], max_new_tokens=12, greedy=True, stop=stop)
    assert generation["finish_reason"] == "stop"
    assert generation["text"] == full[:full.index(stop)]


# --- refusals -----------------------------------------------------------------------------------------


def body(**fields) -> bytes:
    return json.dumps({"prompts": ["The cat"], **fields}).encode()


BAD_BODIES = [
    (b'{"prompts": ["a"', "request body is not valid JSON: Expecting"),
    (b"\xff\xfe{}", "request body is not UTF-8 text"),
    (b'{"prompts": ["a"], "temperature": NaN}', "request body is not valid JSON: NaN is not a JSON number"),
    (b'["The cat"]', "request body must be a JSON object, got array"),
    (body(beam_width=2), "unknown field(s) 'beam_width'; known fields: prompts, prompt, stream, max_new_tokens"),
    (body(greedy="yes"), 'greedy must be true or false, got string "yes"'),
    (body(max_new_tokens=True), "max_new_tokens must be an integer, got boolean true"),
    (body(max_new_tokens=2.5), "max_new_tokens must be an integer, got number 2.5"),
    (body(temperature="hot"), 'temperature must be a number, got string "hot"'),
    (body(seed=None), "seed must be an integer, got null"),
    (body(stop=[1]), "stop must be a string or a list of strings, got array [1]"),
    (body(stream=1), "stream must be true or false, got integer 1"),
    (json.dumps({"prompts": "The cat"}).encode(), 'prompts must be a list of strings, got string "The cat"'),
    (json.dumps({"prompts": ["a", 3]}).encode(), 'prompts must be a list of strings, got array ["a", 3]'),
    (json.dumps({"prompt": ["a"]}).encode(), 'prompt must be a string, got array ["a"]'),
    (json.dumps({"prompts": []}).encode(), "prompts is empty: send at least one prompt"),
    (json.dumps({"prompts": ["a"] * 5}).encode(), "5 prompts is more than this server's limit of 4 per request"),
    (json.dumps({"prompts": ["a"], "prompt": "b"}).encode(), 'give "prompts" (a list of strings) or "prompt"'),
    (json.dumps({"greedy": True}).encode(), 'give "prompts" (a list of strings) or "prompt"'),
    (body(max_new_tokens=17), "max_new_tokens=17 is above this server's limit of 16 (inference.server.max_new_tokens)"),
    (body(max_new_tokens=4, tokens_to_generate=4), "give either max_new_tokens or tokens_to_generate"),
    (body(top_k=-1), "top_k=-1 must be >= 0 (0 keeps every token)"),
    (body(top_p=0), "top_p=0 must be in (0, 1]"),
    (body(temperature=0), "temperature=0 must be positive (or set greedy)"),
    (body(seed=-1), "seed=-1 must be in [0, 4294967295]"),
    (body(stop=[""]), "stop must be a list of non-empty strings"),
    (json.dumps({"prompt": "x" * 60, "max_new_tokens": 8}).encode(),
     "prompt 0 has 60 tokens; with max_new_tokens=8 that exceeds the model's context of 64 tokens"),
    (json.dumps({"prompt": "x" * 60, "max_new_tokens": 8, "stream": True}).encode(),
     "prompt 0 has 60 tokens; with max_new_tokens=8 that exceeds the model's context of 64 tokens"),
]


@pytest.mark.parametrize("payload,message", BAD_BODIES)
def test_bad_bodies_get_400_with_the_reason(serving, payload, message):
    status, reply, response = post_json(serving, payload)
    assert (status, set(reply)) == (400, {"error"})
    assert reply["error"].startswith(message), reply["error"]
    assert response.getheader("Content-Type") == "application/json"
    assert serving.client.health()["status"] == "ok"


def test_deeply_nested_json_is_refused_not_fatal(serving):
    status, reply, _ = post_json(serving, b"[" * 1020 + b"]" * 1020)
    assert (status, reply) == (400, {"error": "request body nests arrays or objects too deeply"})
    assert serving.client.health()["status"] == "ok"


BAD_REQUESTS = [
    ("POST", "/generate", {"Content-Length": "3000"}, b"x" * 3000, 413,
     "request body of 3000 bytes is above this server's limit of 2048 (inference.server.max_request_bytes)"),
    ("POST", "/generate", {}, None, 411, "Content-Length is required"),
    ("POST", "/generate", {"Transfer-Encoding": "chunked"}, b"2\r\n{}\r\n0\r\n\r\n", 411,
     "chunked request bodies are not supported: send Content-Length"),
    ("POST", "/generate", {"Content-Length": "ten"}, b"{}", 400, 'Content-Length "ten" is not a byte count'),
    ("POST", "/generate", {"Content-Length": "-1"}, b"{}", 400, 'Content-Length "-1" is not a byte count'),
    ("GET", "/nothing", {}, None, 404, "no such endpoint /nothing: use POST /generate, PUT /api or GET /health"),
    ("POST", "/v1/completions", {"Content-Length": "2"}, b"{}", 404, "no such endpoint /v1/completions"),
    ("GET", "/generate", {}, None, 405, "/generate takes POST, not GET"),
    ("DELETE", "/generate", {}, None, 405, "/generate takes POST, not DELETE"),
    ("POST", "/health", {"Content-Length": "2"}, b"{}", 405, "/health takes GET, not POST"),
    ("POST", "/api", {"Content-Length": "2"}, b"{}", 405, "/api takes PUT, not POST"),
    ("BREW", "/generate", {}, None, 501, "Unsupported method ('BREW')"),
]


@pytest.mark.parametrize("method,path,headers,payload,status,message", BAD_REQUESTS)
def test_bad_requests_get_4xx_with_the_reason(serving, method, path, headers, payload, status, message):
    got, reply, response = raw_request(serving, method, path, payload, headers)
    assert (got, reply) == (status, {"error": reply["error"]})
    assert reply["error"].startswith(message), reply["error"]
    if status == 405:
        assert response.getheader("Allow") in ("GET", "POST", "PUT")
    assert serving.client.health()["status"] == "ok"


def test_a_client_that_sends_less_than_it_announced_gets_400(serving):
    with socket.create_connection(serving.server.address, timeout=30) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}")
        sock.shutdown(socket.SHUT_WR)
        reply = sock.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 400")
    assert b"request body ended after 2 of 100 bytes (Content-Length)" in reply
    assert serving.client.health()["status"] == "ok"


def test_a_failure_inside_generation_is_a_500_and_the_server_goes_on(serving, engine, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(engine, "generate", broken)
    with pytest.raises(ServerError) as failed:
        serving.client.generate(PROMPTS, greedy=True)
    assert (failed.value.status, failed.value.message) == (500, "generation failed: RuntimeError: boom")

    real_stream = type(engine).stream

    def breaks_midway(self, prompts, params):
        events = real_stream(self, prompts, params)
        yield next(events)
        raise RuntimeError("lost a shard")

    monkeypatch.setattr(engine, "stream", breaks_midway.__get__(engine))
    stream = serving.client.stream(PROMPTS[0], greedy=True)
    assert next(stream)["index"] == 0
    with pytest.raises(ServerError, match="HTTP 500: generation failed: RuntimeError: lost a shard"):
        next(stream)

    monkeypatch.undo()
    assert len(serving.client.generate(PROMPTS, greedy=True)) == 3


# --- streaming ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [
    {"greedy": True, "logprobs": True},
    {"temperature": 0.9, "top_k": 40, "seed": 5, "stop_on_eod": False, "logprobs": True}])
def test_streamed_events_add_up_to_the_generation(serving, engine, params):
    expected = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, **params))
    events = list(serving.client.stream(PROMPTS, max_new_tokens=10, **params))
    done = events.pop()
    assert done == {"done": True, "generations": [g.to_dict() for g in expected]}
    for index, generation in enumerate(expected):
        mine = [e for e in events if e["index"] == index]
        assert "".join(e["text"] for e in mine) == generation.text
        assert [e["token_id"] for e in mine] == generation.token_ids
        assert [e["logprob"] for e in mine] == generation.logprobs
        assert [e["finish_reason"] for e in mine] == [None] * (len(mine) - 1) + [generation.finish_reason]


def test_streaming_is_chunked_ndjson(serving):
    connection = http.client.HTTPConnection(*serving.server.address, timeout=60)
    connection.request("POST", "/generate", json.dumps({"prompt": "The", "max_new_tokens": 3, "greedy": True,
                                                        "stream": True}))
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/x-ndjson"
    assert response.getheader("Transfer-Encoding") == "chunked"
    lines = [json.loads(line) for line in response.read().splitlines()]
    assert [set(line) for line in lines[:3]] == [{"index", "token_id", "text", "logprob", "finish_reason"}] * 3
    assert lines[3]["done"] is True and len(lines) == 4
    # The connection stays open for the next request (HTTP/1.1 keep-alive).
    connection.request("GET", "/health")
    assert connection.getresponse().status == 200
    connection.close()


# --- concurrency and shutdown -------------------------------------------------------------------------------


def test_concurrent_requests_get_what_they_get_one_by_one_and_never_overlap(serving, engine, monkeypatch):
    requests = [{"prompts": PROMPTS[:1], "greedy": True},
                {"prompts": PROMPTS, "greedy": True, "max_new_tokens": 6},
                {"prompts": PROMPTS[1:], "seed": 3},
                {"prompts": ["A", "B", "C", "D"], "seed": 4, "top_k": 20},
                {"prompts": PROMPTS[2:], "greedy": True, "stream": True},
                {"prompts": PROMPTS[:2], "seed": 9, "stream": True}]

    def ask(request: dict):
        request = dict(request)
        prompts, stream = request.pop("prompts"), request.pop("stream", False)
        if stream:
            return list(serving.client.stream(prompts, **request))[-1]["generations"]
        return serving.client.generate(prompts, **request)

    one_by_one = [ask(r) for r in requests]

    running, most, lock = 0, 0, threading.Lock()

    def tracked(method):
        def call(*args, **kwargs):
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            time.sleep(0.02)  # widen the window in which an overlap would show
            try:
                return method(*args, **kwargs) if method.__name__ == "generate" else list(method(*args, **kwargs))
            finally:
                with lock:
                    running -= 1
        return call

    monkeypatch.setattr(engine, "generate", tracked(engine.generate))
    monkeypatch.setattr(engine, "stream", tracked(engine.stream))
    start = threading.Barrier(len(requests) * 2)
    results: dict[int, list] = {}

    def worker(slot: int) -> None:
        start.wait()
        results[slot] = ask(requests[slot % len(requests)])

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(len(requests) * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [results[slot] for slot in range(len(threads))] == one_by_one * 2
    assert most == 1


def test_stop_finishes_the_request_in_progress_and_refuses_the_rest(engine, monkeypatch):
    serving = Serving(engine)
    entered, release = threading.Event(), threading.Event()
    real_generate = engine.generate

    def held(*args, **kwargs):
        entered.set()
        release.wait(timeout=60)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(engine, "generate", held)
    outcomes: dict[str, object] = {}

    def ask(name: str) -> None:
        try:
            outcomes[name] = serving.client.generate(PROMPTS[:1], greedy=True)
        except ServerError as e:
            outcomes[name] = e

    first = threading.Thread(target=ask, args=("in progress",))
    first.start()
    assert entered.wait(timeout=60)
    queued = threading.Thread(target=ask, args=("queued",))
    queued.start()
    deadline = time.monotonic() + 30
    while serving.server._jobs.qsize() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    serving.server.stop()
    ask("after stop")
    release.set()
    for thread in (first, queued):
        thread.join(timeout=60)
    serving.thread.join(timeout=60)

    assert not serving.thread.is_alive()
    assert outcomes["in progress"] == [g.to_dict() for g in real_generate(PROMPTS[:1], greedy())]
    for name in ("queued", "after stop"):
        assert (outcomes[name].status, outcomes[name].message) == (503, "the server is shutting down")
    assert serving.server.requests_served == 1
    with pytest.raises(ServerUnavailable, match="no server answers at"):
        serving.client.health()


# --- model parallel: what rank 0 broadcasts and what the other ranks do with it -------------------------------


def test_rank_0_broadcasts_every_engine_call_keepalives_and_the_end(engine, monkeypatch):
    sent: list[_Command] = []
    monkeypatch.setattr(server_module, "_broadcast", sent.append)
    serving = Serving(engine, keepalive_seconds=0.05)
    deadline = time.monotonic() + 30
    while not sent and time.monotonic() < deadline:
        time.sleep(0.01)
    serving.client.generate(PROMPTS[:2], greedy=True, max_new_tokens=3)
    list(serving.client.stream(PROMPTS[:1], seed=4, max_new_tokens=3))
    with pytest.raises(ServerError):
        serving.client.generate(PROMPTS, beam_width=2)  # refused before the engine: nothing to broadcast
    serving.close()
    assert sent[0].kind == "keepalive"
    assert [(c.kind, c.prompts, c.params) for c in sent if c.kind != "keepalive"] == [
        ("generate", PROMPTS[:2], greedy(max_new_tokens=3)),
        ("stream", PROMPTS[:1], SamplingParams(max_new_tokens=3, seed=4)),
        ("shutdown", None, None)]


def test_other_ranks_make_the_broadcast_calls_until_shutdown(engine, monkeypatch):
    commands = iter([_Command("keepalive"), _Command("generate", PROMPTS, greedy()),
                     _Command("stream", PROMPTS[:1], greedy()), _Command("generate", ["x" * 60], greedy()),
                     _Command("generate", PROMPTS[1:], greedy()), _Command("shutdown")])

    def receive(objects: list, src: int) -> None:
        assert src == 0
        objects[0] = next(commands)

    made = []
    real_generate, real_stream = engine.generate, engine.stream
    monkeypatch.setattr(server_module.dist, "broadcast_object_list", receive)
    monkeypatch.setattr(engine, "generate", lambda prompts, params: made.append(("generate", prompts)) or
                        real_generate(prompts, params))
    monkeypatch.setattr(engine, "stream", lambda prompts, params: made.append(("stream", prompts)) or
                        real_stream(prompts, params))
    # The prompt that does not fit raises on this rank as on rank 0, which answers the client: the loop goes on.
    assert follow(engine) == 4
    assert made == [("generate", PROMPTS), ("stream", PROMPTS[:1]), ("generate", ["x" * 60]),
                    ("generate", PROMPTS[1:])]
    assert next(commands, None) is None


def test_serving_refuses_data_parallel_replicas(engine, monkeypatch):
    class TwoReplicas:
        data_parallel_size = 2

    monkeypatch.setattr(engine.runner, "state", TwoReplicas())
    with pytest.raises(ValueError, match="serving runs one model replica, but data parallel size is 2"):
        GenerationServer(engine, port=0)


# --- client -------------------------------------------------------------------------------------------------


def test_client_reports_the_servers_message_and_an_absent_server(serving):
    with pytest.raises(ServerError) as refused:
        serving.client.generate([])
    assert refused.value.status == 400
    assert str(refused.value) == "HTTP 400: prompts is empty: send at least one prompt"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    with pytest.raises(ServerUnavailable, match=f"no server answers at http://127.0.0.1:{free_port}"):
        GenerationClient(f"http://127.0.0.1:{free_port}").health()


def test_client_command_line_prints_the_continuation(serving, engine, capsys):
    expected = engine.generate(PROMPTS[:2], greedy(max_new_tokens=6))
    url = serving.server.url
    assert client_main(["--url", url, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--greedy",
                        "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == "".join(g.text + "\n" for g in expected)
    assert client_main(["--url", url, "--prompt", PROMPTS[0], "--greedy", "--max-new-tokens", "6", "--stream"]) == 0
    assert capsys.readouterr().out == expected[0].text + "\n"
    assert client_main(["--url", url, "--prompt", "x" * 60, "--max-new-tokens", "8"]) == 1
    assert capsys.readouterr().err == ("error: HTTP 400: prompt 0 has 60 tokens; with max_new_tokens=8 that exceeds "
                                       "the model's context of 64 tokens\n")


# --- tensor parallel, through main.py -------------------------------------------------------------------------


@pytest.mark.slow
def test_tensor_parallel_server_matches_one_process_and_stops_on_ctrl_c(run_dir, engine, tmp_path):
    args = ["stages=[inference]", f"run_dir={tmp_path / 'served'}",
            f"inference.checkpoint={last_checkpoint_path(run_dir)}", "inference.serve=true", "inference.server.port=0",
            "trainer.devices=2", "model.tensor_model_parallel_size=2", *TINY_MODEL]
    process, url = start_server(args, tmp_path / "stderr.txt")
    try:
        client = GenerationClient(url, timeout=120)
        assert client.health()["model"]["tensor_model_parallel_size"] == 2
        expected = [g.to_dict() for g in engine.generate(PROMPTS, greedy(max_new_tokens=10))]
        assert client.generate(PROMPTS, greedy=True, max_new_tokens=10) == expected
        assert list(client.stream(PROMPTS, greedy=True, max_new_tokens=10))[-1]["generations"] == expected
        # Refused by rank 0 alone, then by the engine on both ranks: both go on serving.
        with pytest.raises(ServerError, match="HTTP 400: unknown field"):
            client.generate(PROMPTS, beam_width=2)
        with pytest.raises(ServerError, match="HTTP 400: prompt 0 has 60 tokens"):
            client.generate(["x" * 60], max_new_tokens=8)
        # Sampled with the server's defaults from conf/inference/default.yaml (top_p 0.9).
        sampled = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, seed=2, top_k=30, top_p=0.9))
        assert [g["token_ids"] for g in client.generate(PROMPTS, max_new_tokens=10, seed=2, top_k=30)] == \
            [g.token_ids for g in sampled]
    finally:
        stdout = stop_server(process, signal.SIGINT, whole_group=True)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 0, stderr[-3000:]
    assert "server stopped after 4 request(s)" in stdout and "server stopped by SIGINT" in stdout
    assert json.loads((tmp_path / "served" / "stages.json").read_text())["inference"] == {"signal": "SIGINT"}
    assert "Traceback" not in stderr and "forcefully" not in stderr  # every worker exited by itself
