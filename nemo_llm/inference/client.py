"""A small client of the text-generation server (nemo_llm.inference.server), standard library only.

    client = GenerationClient("http://127.0.0.1:5000")
    client.generate(["The cat"], max_new_tokens=16, greedy=True)   # -> [{"prompt", "text", ...}]
    for event in client.stream("The cat", max_new_tokens=16):       # token events, then {"done": true, ...}
        print(event.get("text", ""), end="")

From a shell: python -m nemo_llm.inference.client --url http://127.0.0.1:5000 --prompt "The cat" --stream
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

DEFAULT_URL = "http://127.0.0.1:5000"


class ServerError(Exception):
    """The server refused or failed a request: status is the HTTP status (4xx, 5xx), message its reason."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class ServerUnavailable(ConnectionError):
    """No server answers at the URL."""


class GenerationClient:
    def __init__(self, url: str = DEFAULT_URL, timeout: float = 600.0):
        """url: the server's base address (what it prints at start); timeout: seconds to wait for a reply."""
        self.url = url.rstrip("/")
        self.timeout = timeout

    def health(self) -> dict[str, Any]:
        """{"status": "ok", "model": {...}, "limits": {...}}."""
        with self._open("GET", "/health") as response:
            return json.load(response)

    def generate(self, prompts: str | Sequence[str], **params: Any) -> list[dict[str, Any]]:
        """One generation per prompt: {"prompt", "text", "token_ids", "finish_reason", "logprobs"}.
        params are the request's sampling fields (max_new_tokens, greedy, temperature, top_k, top_p,
        repetition_penalty, stop, stop_on_eod, seed, logprobs)."""
        with self._open("POST", "/generate", _body(prompts, params, stream=False)) as response:
            return json.load(response)["generations"]

    def stream(self, prompts: str | Sequence[str], **params: Any) -> Iterator[dict[str, Any]]:
        """Token events as they are generated ({"index", "token_id", "text", "logprob", "finish_reason"}),
        then one {"done": true, "generations": [...]}. Raises ServerError if generation fails midway."""
        with self._open("POST", "/generate", _body(prompts, params, stream=True)) as response:
            for line in response:
                if not line.strip():
                    continue
                event = json.loads(line)
                if "error" in event:
                    raise ServerError(500, event["error"])
                yield event

    def _open(self, method: str, path: str, body: dict[str, Any] | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise ServerError(e.code, _error_message(e)) from None
        except urllib.error.URLError as e:
            raise ServerUnavailable(f"no server answers at {self.url} ({e.reason}): start one with "
                                    "`python main.py stages=[inference] inference.serve=true` or check --url") from None


def _body(prompts: str | Sequence[str], params: dict[str, Any], stream: bool) -> dict[str, Any]:
    body = {"prompt": prompts} if isinstance(prompts, str) else {"prompts": list(prompts)}
    return {**body, **params, "stream": stream}


def _error_message(error: urllib.error.HTTPError) -> str:
    raw = error.read()
    try:
        return json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace").strip() or error.reason


# --- command line -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nemo_llm.inference.client",
                                     description="Generate text with a running nemo_llm server and print it.")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the server's address (default {DEFAULT_URL})")
    parser.add_argument("--prompt", action="append", required=True,
                        help="a prompt; repeat for several (one with --stream)")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--greedy", action="store_true", default=None, help="argmax instead of sampling")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument("--stop", action="append", help="a string that ends generation; repeat for several")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    parser.add_argument("--json", action="store_true", help="print the server's generations as JSON lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print each prompt's continuation (one per line), or with --json each generation as JSON."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.stream and len(args.prompt) > 1:
        parser.error("--stream prints one continuation as it grows: give one --prompt")
    params = {key: value for key, value in (
        ("max_new_tokens", args.max_new_tokens), ("greedy", args.greedy), ("temperature", args.temperature),
        ("top_k", args.top_k), ("top_p", args.top_p), ("repetition_penalty", args.repetition_penalty),
        ("stop", args.stop), ("seed", args.seed)) if value is not None}
    client = GenerationClient(args.url)
    try:
        if args.stream:
            _print_stream(client.stream(args.prompt[0], **params), args.json)
        else:
            for generation in client.generate(args.prompt, **params):
                print(json.dumps(generation) if args.json else generation["text"], flush=True)
    except (ServerError, ServerUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _print_stream(events: Iterator[dict[str, Any]], as_json: bool) -> None:
    for event in events:
        if as_json:
            print(json.dumps(event), flush=True)
        elif not event.get("done"):
            print(event["text"], end="", flush=True)
    if not as_json:
        print()


if __name__ == "__main__":
    sys.exit(main())
