"""A text-generation REST server over an InferenceEngine (standard library HTTP, JSON in and out).

    POST /generate   {"prompts": [...], "max_new_tokens": 32, "greedy": true, ...} -> {"generations": [...]}
    PUT  /api        the same body, as Megatron-LM's text generation server takes it; the reply adds
                     "text": prompt + continuation per prompt, as Megatron's does
    GET  /health     {"status": "ok", "model": {...}, "limits": {...}}

With "stream": true the reply is newline-delimited JSON sent as tokens are generated: one object per
token event, then {"done": true, "generations": [...]}. docs/serving.md describes every field.

HTTP requests are answered by threads, but the model runs one request at a time: handler threads put
jobs on a queue and wait; one engine loop takes them in order. Under torch.distributed (tensor or
pipeline parallel) only global rank 0 listens: its engine loop broadcasts each job to the other ranks,
whose follow() loops make the same engine call, since every rank of the model must take part in it.
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import torch.distributed as dist

from nemo_llm.errors import NemoLLMError
from nemo_llm.inference.engine import FINISH_LENGTH, Generation, GenerationTooLongError, InferenceEngine, TokenEvent
from nemo_llm.inference.sampling import SamplingParams

STREAM_CONTENT_TYPE = "application/x-ndjson"
# Seeds are mixed with the prompt's place in the request into a 64-bit generator seed (row_generators).
MAX_SEED = 2**32 - 1
# Without requests, rank 0 still broadcasts this often, so that the other ranks' wait for the next
# request never reaches the process group's timeout (30 minutes for gloo, 10 for NCCL).
KEEPALIVE_SECONDS = 60.0
# The engine loop wakes this often even when idle: a signal may reach the process on another thread,
# and Python runs its handler in the main thread only once that thread is back in Python code.
POLL_SECONDS = 0.2
# How long a stopping server waits for its HTTP threads to finish writing replies already generated.
REPLY_GRACE_SECONDS = 10.0

# Request field -> JSON type it must have. Names are SamplingParams' own, plus the request's shape.
_PARAM_TYPES = {"max_new_tokens": "integer", "greedy": "boolean", "temperature": "number", "top_k": "integer",
                "top_p": "number", "repetition_penalty": "number", "stop": "string or strings",
                "stop_on_eod": "boolean", "seed": "integer", "logprobs": "boolean"}
_REQUEST_TYPES = {"prompts": "strings", "prompt": "string", "stream": "boolean", **_PARAM_TYPES}
# Megatron-LM's names for the same settings.
_ALIASES = {"tokens_to_generate": "max_new_tokens", "random_seed": "seed"}


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for (inference.server in the config)."""

    max_prompts: int = 32
    max_new_tokens: int = 1024
    max_request_bytes: int = 1_000_000


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class GenerationRequest:
    prompts: list[str]
    params: SamplingParams
    stream: bool = False


# --- request parsing --------------------------------------------------------------------------------


def parse_request(body: bytes, defaults: SamplingParams, limits: ServerLimits) -> GenerationRequest:
    """The request a JSON body asks for, on top of the server's default sampling settings; raises
    RequestError (400) naming the first thing wrong with it."""
    given = _decode_object(body)
    for alias, name in _ALIASES.items():
        if alias in given:
            if name in given:
                raise RequestError(400, f"give either {name} or {alias} (the same setting), not both")
            given[name] = given.pop(alias)
    unknown = sorted(set(given) - set(_REQUEST_TYPES))
    if unknown:
        known = ", ".join([*_REQUEST_TYPES, *_ALIASES])
        raise RequestError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; known fields: {known}")
    for name, value in given.items():
        _check_type(name, value, _REQUEST_TYPES[name])
    if isinstance(given.get("stop"), str):
        given["stop"] = [given["stop"]]

    prompts = _prompts(given, limits)
    params = replace(defaults, **{k: v for k, v in given.items() if k in _PARAM_TYPES})
    if params.max_new_tokens > limits.max_new_tokens:
        raise RequestError(400, f"max_new_tokens={params.max_new_tokens} is above this server's limit of "
                                f"{limits.max_new_tokens} (inference.server.max_new_tokens)")
    if not 0 <= params.seed <= MAX_SEED:
        raise RequestError(400, f"seed={params.seed} must be in [0, {MAX_SEED}]")
    try:
        params.check()
    except ValueError as e:
        raise RequestError(400, str(e)) from None
    return GenerationRequest(prompts, params, bool(given.get("stream", False)))


def _decode_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise RequestError(400, "request body is not UTF-8 text: send JSON encoded as UTF-8") from None
    except ValueError as e:  # json.JSONDecodeError, or NaN/Infinity
        raise RequestError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise RequestError(400, "request body nests arrays or objects too deeply") from None
    if not isinstance(value, dict):
        raise RequestError(400, f"request body must be a JSON object, got {_json_type(value)}")
    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _check_type(name: str, value: Any, expected: str) -> None:
    # bool is a subclass of int in Python, but true is not a number in JSON.
    strings = isinstance(value, list) and all(isinstance(v, str) for v in value)
    ok = {"integer": isinstance(value, int) and not isinstance(value, bool),
          "number": isinstance(value, (int, float)) and not isinstance(value, bool),
          "boolean": isinstance(value, bool),
          "string": isinstance(value, str),
          "strings": strings,
          "string or strings": strings or isinstance(value, str)}
    if not ok[expected]:
        wanted = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string",
                  "strings": "a list of strings", "string or strings": "a string or a list of strings"}[expected]
        raise RequestError(400, f"{name} must be {wanted}, got {_json_type(value)} {_short(value)}")


def _prompts(given: dict[str, Any], limits: ServerLimits) -> list[str]:
    if ("prompts" in given) == ("prompt" in given):
        raise RequestError(400, 'give "prompts" (a list of strings) or "prompt" (a string), exactly one of them')
    prompts = given["prompts"] if "prompts" in given else [given["prompt"]]
    if not prompts:
        raise RequestError(400, "prompts is empty: send at least one prompt")
    if len(prompts) > limits.max_prompts:
        raise RequestError(400, f"{len(prompts)} prompts is more than this server's limit of {limits.max_prompts} "
                                "per request (inference.server.max_prompts): split them over several requests")
    return prompts


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


# --- the engine loop ---------------------------------------------------------------------------------


@dataclass
class _Command:
    """What rank 0 broadcasts to the other ranks: an engine call, a keepalive or the end."""

    kind: str  # generate | stream | keepalive | shutdown
    prompts: list[str] | None = None
    params: SamplingParams | None = None


class _Done:
    """The end of a job's replies, with the generations of a non-streamed job."""

    def __init__(self, generations: list[Generation] | None = None):
        self.generations = generations


@dataclass
class _Job:
    request: GenerationRequest
    # Filled by the engine loop: TokenEvents (streaming), then a _Done or a RequestError.
    replies: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)


_STOP = object()  # put on the job queue to wake the engine loop when stop() is called


def _execute(engine: InferenceEngine, command: _Command,
             emit: Callable[[TokenEvent], None] = lambda event: None) -> list[Generation] | None:
    """The engine call a command stands for, made alike on every rank; a stream's events go to emit."""
    if command.kind == "stream":
        for event in engine.stream(command.prompts, command.params):
            emit(event)
        return None
    return engine.generate(command.prompts, command.params)


def _broadcast(command: _Command) -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list([command], src=0)


def follow(engine: InferenceEngine) -> int:
    """Every rank but 0: make the engine calls rank 0 broadcasts until it sends shutdown; returns the
    number of calls made. An error raised here is raised on rank 0 too (same code, same inputs), which
    reports it to the client, so the loop goes on."""
    calls = 0
    while True:
        received: list[_Command | None] = [None]
        dist.broadcast_object_list(received, src=0)
        command = received[0]
        if command.kind == "shutdown":
            return calls
        if command.kind == "keepalive":
            continue
        calls += 1
        try:
            _execute(engine, command)
        except GenerationTooLongError:
            pass  # a 400 for the client, answered by rank 0
        except Exception:
            print(f"rank {dist.get_rank()}: generation failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)


# --- the server ---------------------------------------------------------------------------------------


class GenerationServer:
    """HTTP on (host, port), bound when constructed (port 0: a free port, see .url), and the engine loop.

    serve() runs the engine loop in the calling thread (the one that owns the model's device) with the
    HTTP listener in a background thread, until stop(). Under torch.distributed build it on global
    rank 0 only, while the other ranks run follow(engine)."""

    def __init__(self, engine: InferenceEngine, defaults: SamplingParams | None = None,
                 limits: ServerLimits | None = None, host: str = "127.0.0.1", port: int = 5000,
                 keepalive_seconds: float = KEEPALIVE_SECONDS, log_requests: bool = True):
        state = engine.runner.state
        if state is not None and state.data_parallel_size > 1:
            raise ValueError(f"serving runs one model replica, but data parallel size is {state.data_parallel_size}: "
                             "set trainer.devices x trainer.num_nodes to tensor x pipeline model parallel size")
        if dist.is_initialized() and dist.get_rank() != 0:
            raise ValueError("only global rank 0 serves HTTP; the other ranks run follow(engine)")
        self.engine = engine
        self.defaults = defaults or SamplingParams()
        self.limits = limits or ServerLimits()
        self.keepalive_seconds = keepalive_seconds
        self.log_requests = log_requests  # one stderr line per request, as http.server writes them
        self.requests_served = 0  # requests the model ran (refused ones are not counted)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = False
        self._closed = False  # no job is taken any more: set under _intake once the engine loop ends
        self._unanswered = 0  # jobs whose HTTP thread has not finished its reply
        self._intake = threading.Condition()
        self._http = _HTTPServer((host, port), self)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound."""
        host, port = self._http.server_address[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def model_info(self) -> dict[str, Any]:
        state = self.engine.runner.state
        tokenizer = self.engine.tokenizer
        return {"max_sequence_length": self.engine.max_sequence_length,
                "vocab_size": tokenizer.vocab_size if tokenizer is not None else None,
                "tensor_model_parallel_size": state.tensor_model_parallel_size if state else 1,
                "pipeline_model_parallel_size": state.pipeline_model_parallel_size if state else 1}

    def serve(self) -> None:
        """Answer requests until stop(); on return the port is closed and the other ranks have left follow()."""
        listener = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.1},
                                    name="http", daemon=True)
        listener.start()
        try:
            self._engine_loop()
        finally:
            with self._intake:
                self._closed = True
            self._refuse_waiting_jobs()
            _broadcast(_Command("shutdown"))
            with self._intake:  # the process may exit next: let the last replies reach their clients
                self._intake.wait_for(lambda: self._unanswered == 0, timeout=REPLY_GRACE_SECONDS)
            self._http.shutdown()
            self._http.server_close()
            listener.join()

    def stop(self) -> None:
        """Ask serve() to return after the request in progress; safe to call from a signal handler."""
        self._stopping = True
        self._jobs.put(_STOP)  # SimpleQueue.put is reentrant: allowed in a signal handler

    @contextmanager
    def submit(self, request: GenerationRequest) -> Iterator[_Job]:
        """Queue a request for the engine loop (from an HTTP thread), which is replying to it inside;
        RequestError 503 once stopping."""
        job = _Job(request)
        with self._intake:
            if self._stopping or self._closed:
                raise RequestError(503, "the server is shutting down")
            self._jobs.put(job)
            self._unanswered += 1
        try:
            yield job
        finally:
            with self._intake:
                self._unanswered -= 1
                self._intake.notify_all()

    def _engine_loop(self) -> None:
        last_broadcast = time.monotonic()
        while not self._stopping:
            try:
                job = self._jobs.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if time.monotonic() - last_broadcast >= self.keepalive_seconds:
                    _broadcast(_Command("keepalive"))
                    last_broadcast = time.monotonic()
                continue
            if job is _STOP or self._stopping:
                if job is not _STOP:
                    job.replies.put(RequestError(503, "the server is shutting down"))
                break
            self._run(job)
            last_broadcast = time.monotonic()

    def _run(self, job: _Job) -> None:
        request = job.request
        command = _Command("stream" if request.stream else "generate", request.prompts, request.params)
        self.requests_served += 1
        try:
            _broadcast(command)
            job.replies.put(_Done(_execute(self.engine, command, job.replies.put)))
        except GenerationTooLongError as e:
            job.replies.put(RequestError(400, str(e)))
        except Exception as e:
            print(f"generation failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            job.replies.put(RequestError(500, f"generation failed: {type(e).__name__}: {_first_line(e)}"))

    def _refuse_waiting_jobs(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                job.replies.put(RequestError(503, "the server is shutting down"))


def streamed_generations(prompts: Sequence[str], events: Sequence[TokenEvent], with_logprobs: bool) -> list[Generation]:
    """The generations a stream of events adds up to: each prompt's text is the concatenation of its events' text."""
    generations = [Generation(p, "", [], FINISH_LENGTH, [] if with_logprobs else None) for p in prompts]
    for event in events:
        generation = generations[event.index]
        generation.text += event.text
        generation.token_ids.append(event.token_id)
        if with_logprobs:
            generation.logprobs.append(event.logprob)
        if event.finish_reason is not None:
            generation.finish_reason = event.finish_reason
    return generations


# --- HTTP -----------------------------------------------------------------------------------------------


_ROUTES = {"/generate": "POST", "/api": "PUT", "/health": "GET"}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a slow client must not hold up the shutdown

    def __init__(self, address: tuple[str, int], app: GenerationServer):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.app = app


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked replies for streaming
    timeout = 60  # seconds a client may take to send its request
    server_version = "nemo_llm"

    @property
    def app(self) -> GenerationServer:
        return self.server.app

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            if path not in _ROUTES:
                raise RequestError(404, f"no such endpoint {path}: use POST /generate, PUT /api or GET /health")
            if method != _ROUTES[path]:
                raise RequestError(405, f"{path} takes {_ROUTES[path]}, not {method}")
            if path == "/health":
                self._send_json(200, {"status": "ok", "model": self.app.model_info(),
                                      "limits": asdict(self.app.limits)})
            else:
                self._generate(megatron_reply=path == "/api")
        except RequestError as e:
            self._send_error(e.status, e.message, allow=_ROUTES.get(path) if e.status == 405 else None)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away; nothing to answer
        except Exception as e:  # a bug here must cost one request, never the server
            print(f"error answering {method} {path}:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            self._send_error(500, f"internal server error: {type(e).__name__}: {_first_line(e)}")

    def _generate(self, megatron_reply: bool) -> None:
        request = parse_request(self._read_body(), self.app.defaults, self.app.limits)
        with self.app.submit(request) as job:
            try:
                first = _reply(job)
            except RequestError as e:  # answered here, inside submit(), so that a stopping server waits for it
                self._send_error(e.status, e.message)
                return
            if request.stream:
                self._stream(job, first, request)
                return
            generations = first.generations
            reply: dict[str, Any] = {"generations": [g.to_dict() for g in generations]}
            if megatron_reply:
                reply["text"] = [g.prompt + g.text for g in generations]
            self._send_json(200, reply)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(411, "chunked request bodies are not supported: send Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(411, "Content-Length is required")
        if not length.strip().isdigit():
            raise RequestError(400, f"Content-Length {_short(length)} is not a byte count")
        size = int(length)
        limit = self.app.limits.max_request_bytes
        if size > limit:
            raise RequestError(413, f"request body of {size} bytes is above this server's limit of {limit} "
                                    "(inference.server.max_request_bytes)")
        body = self.rfile.read(size)
        if len(body) < size:
            raise RequestError(400, f"request body ended after {len(body)} of {size} bytes (Content-Length)")
        return body

    def _stream(self, job: _Job, first: TokenEvent | _Done, request: GenerationRequest) -> None:
        """Chunked NDJSON: each event as the engine loop hands it over, then the generations they add up to."""
        self.send_response(200)
        self.send_header("Content-Type", STREAM_CONTENT_TYPE)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events: list[TokenEvent] = []
        item = first
        try:
            while not isinstance(item, _Done):
                events.append(item)
                self._write_chunk({"index": item.index, "token_id": item.token_id, "text": item.text,
                                   "logprob": item.logprob, "finish_reason": item.finish_reason})
                item = _reply(job)
            generations = streamed_generations(request.prompts, events, request.params.logprobs)
            self._write_chunk({"done": True, "generations": [g.to_dict() for g in generations]})
        except RequestError as e:  # the headers are gone: the error becomes the stream's last line
            self._write_chunk({"error": e.message})
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _send_json(self, status: int, obj: dict[str, Any], close: bool = False,
                   headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str, allow: str | None = None) -> None:
        # The connection closes after an error: part of the request body may be unread.
        self._send_json(status, {"error": message}, close=True, headers={"Allow": allow} if allow else None)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.app.log_requests:
            super().log_request(code, size)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a malformed request line, an unsupported method) as JSON too."""
        self._send_error(code, message or HTTPStatus(code).phrase)


def _reply(job: _Job) -> TokenEvent | _Done:
    """The next thing the engine loop hands over for job; raises the RequestError it hands over."""
    item = job.replies.get()
    if isinstance(item, RequestError):
        raise item
    return item


class ServeError(NemoLLMError):
    """The server could not start (the port is taken, say)."""


# --- running it from a stage ------------------------------------------------------------------------------


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _on_stop_signals(handler: Callable[[str], None]) -> Iterator[None]:
    """handler(signal name) on SIGINT/SIGTERM while inside (main thread only); the previous handlers after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, lambda signum, frame: handler(signal.Signals(signum).name)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def serve(engine: InferenceEngine, defaults: SamplingParams, limits: ServerLimits, host: str, port: int) -> dict:
    """Serve on every rank until SIGINT or SIGTERM: global rank 0 listens on host:port and prints the
    address, the other ranks follow it. Returns a summary: requests answered, and the signal this
    process received ("signal", None if none)."""
    received: list[str] = []
    if dist.is_initialized() and dist.get_rank() != 0:
        # Rank 0 ends the loop for everyone; a signal here (Ctrl-C reaches every process) must not cut it short.
        with _on_stop_signals(received.append):
            requests = follow(engine)
        return {"rank": dist.get_rank(), "requests": requests, "signal": received[0] if received else None}
    try:
        server = GenerationServer(engine, defaults, limits, host, port)
    except (OSError, ValueError) as e:
        _broadcast(_Command("shutdown"))  # the other ranks are already waiting for rank 0
        if isinstance(e, ValueError):
            raise ServeError(str(e)) from None
        raise ServeError(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another inference.server.port "
                         "(0 picks a free one)") from None
    print(f"serving text generation on {server.url} (POST /generate, PUT /api, GET /health); "
          "stop with Ctrl-C or SIGTERM", flush=True)

    def stop(name: str) -> None:
        received.append(name)
        server.stop()

    with _on_stop_signals(stop):
        server.serve()
    print(f"server stopped after {server.requests_served} request(s)", flush=True)
    return {"url": server.url, "requests": server.requests_served, "signal": received[0] if received else None}
