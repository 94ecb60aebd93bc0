"""`tinygpt serve` under hostile input: a generated table of malformed requests, each with the
one answer it must get (never a 500), the prompt refused before tokenizing, tokenizing off the
event loop, and, against a real `tinygpt serve` process, bodies over the limit refused before
they arrive and a client that leaves halfway through its body logged in one line."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
import httpx  # after the skip: httpx comes with the serve and dev extras
import torch
from fastapi.testclient import TestClient

from tinygpt.checkpoint import save_checkpoint
from tinygpt.config import Config, ModelConfig, TokenizerConfig, dump_toml
from tinygpt.generate import Sampler
from tinygpt.model import GPT
from tinygpt.run import Run
from tinygpt.serve import FIELDS, Limits, Prompts, create_app
from tinygpt.tokenizers import train_tokenizer

NAME = "hostile"
MAX_PROMPT_TOKENS = 24
BASE = {"prompt": "Once", "max_tokens": 2}  # what every generated row changes one thing of


@pytest.fixture(scope="module")
def sampler(train_docs) -> Sampler:
    """A random model over a 300-token byte-level BPE trained on TinyStories: tokens up to several characters long."""
    tokenizer = train_tokenizer("bpe", train_docs[:200], 300)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    return Sampler(GPT(cfg).eval(), tokenizer)


@pytest.fixture(scope="module")
def client(sampler):
    with TestClient(create_app(sampler, NAME, Limits(max_tokens=16, max_prompt_tokens=MAX_PROMPT_TOKENS))) as c:
        yield c


# ---------------------------------------------------------------- the table

# Each request field by OpenAI's completions API (and top_k, which vLLM and llama.cpp add), with
# the JSON kinds it takes. Every other kind is a wrong type, refused with 400 naming the field.
KINDS = {"string": "x", "integer": 3, "float": 0.5, "boolean": True, "object": {"a": 1}, "array": [1]}
TAKES = {
    "model": {"string"}, "prompt": {"string"}, "max_tokens": {"integer"}, "temperature": {"integer", "float"},
    "top_p": {"integer", "float"}, "top_k": {"integer"}, "seed": {"integer"}, "stop": {"string"}, "stream": {"boolean"},
    "stream_options": {"object"}, "user": {"string"}, "n": {"integer"}, "best_of": {"integer"}, "echo": {"boolean"},
    "logprobs": {"integer"}, "presence_penalty": {"integer", "float"}, "frequency_penalty": {"integer", "float"},
    "logit_bias": {"object"}, "suffix": {"string"},
}
# Fields that are not implemented, at values that would change the result: 400 naming the field.
UNSUPPORTED = {
    "n": [2, 0, -1], "best_of": [2], "presence_penalty": [0.5, -2],
    "frequency_penalty": [1e-9], "logit_bias": [{"50": 5}, {"x": {"y": []}}], "suffix": ["", " The end."],
}
NO_OPS = {"n": 1, "best_of": 1, "echo": False, "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "suffix": None, "user": "u-1"}
# Huge numbers for every numeric field, and what each must get (200: taken, else the status naming the field).
HUGE = [10**30, -(10**30), 2**63, 1e308, -1e308]
HUGE_ANSWERS = {
    "max_tokens": [400] * 5, "temperature": [200, 400, 200, 200, 400], "top_p": [400] * 5, "top_k": [200, 400, 200, 400, 400],
    "seed": [400] * 5, "n": [400] * 5, "best_of": [400] * 5, "logprobs": [400] * 5, "presence_penalty": [400] * 5,
    "frequency_penalty": [400] * 5,
}


def body_bytes(body) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def rows():
    """(id, body, content type, status, param): the table, generated kind by kind."""
    json_type = "application/json"
    # Not JSON, or not a JSON object.
    for name, raw in {
        "empty": b"", "blank": b" \n\t", "unterminated": b'{"prompt": "Once"', "garbage": b"{not json",
        "single-quotes": b"{'prompt': 'Once'}", "trailing-comma": b'{"prompt": "Once",}', "comment": b'{"prompt": "Once" /* hi */}',
        "two-objects": b"{}{}", "trailing-nul": b'{"prompt": "Once"}\x00', "control-character": b'{"prompt": "a\x01b"}',
        "array": b"[1, 2]", "string": b'"Once"', "number": b"42", "null": b"null", "true": b"true", "bare-NaN": b"NaN",
        "int-of-5000-digits": b'{"max_tokens": ' + b"9" * 5000 + b"}", "nested-100000-deep": b"[" * 100_000 + b"]" * 100_000,
        "prompt-nested-5000-deep": b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    }.items():
        yield f"json-{name}", raw, json_type, 400, None
    # Bytes that are not UTF-8 (JSON's own encodings, UTF-16 and -32, are taken).
    for name, raw in {
        "latin-1": '{"prompt": "café"}'.encode("latin-1"), "byte-ff": b'{"prompt": "\xff"}', "overlong": b'{"prompt": "\xc0\xaf"}',
        "cut-character": b'{"prompt": "\xe2\x98"}', "continuation-byte": b'{"prompt": "\x80"}',
    }.items():
        yield f"bytes-{name}", raw, json_type, 400, None
    for name, raw in {
        "encoded-surrogate": b'{"prompt": "\xed\xa0\x80"}', "escaped-lone-surrogate": b'{"prompt": "\\ud800"}',
        "escaped-reversed-pair": b'{"prompt": "\\udc36\\ud83d"}',
    }.items():
        yield f"bytes-{name}", raw, json_type, 400, "prompt"
    for name, raw in {
        "utf-8-bom": b"\xef\xbb\xbf" + body_bytes(BASE), "utf-16": json.dumps(BASE).encode("utf-16"),
        "utf-32-le": json.dumps(BASE).encode("utf-32-le"), "escaped-pair": b'{"prompt": "\\ud83d\\udc36", "max_tokens": 2}',
        "escaped-nul": b'{"prompt": "a\\u0000b", "max_tokens": 2}',
    }.items():
        yield f"bytes-{name}", raw, json_type, 200, None
    # Content types: JSON only, as FastAPI's strict rule (a missing one too: a page elsewhere could post without one).
    for media in ["", "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                  "application/xml", "text/json", "json", "application/jsonp", "application/json-patch"]:
        yield f"content-type-{media or 'missing'}", BASE, media, 415, "Content-Type"
    for media in ["application/json; charset=utf-8", "Application/JSON", "application/vnd.api+json", "application/json;charset=latin-1"]:
        yield f"content-type-{media}", BASE, media, 200, None
    # Every field: each JSON kind it does not take, null (its default), and its absence.
    for field, kinds in TAKES.items():
        for kind, value in KINDS.items():
            if kind not in kinds:
                yield f"type-{field}-{kind}", {**BASE, field: value}, json_type, 400, field
        yield f"null-{field}", {**BASE, field: None}, json_type, 200, None
    for field in ("prompt", "max_tokens"):
        yield f"missing-{field}", {k: v for k, v in BASE.items() if k != field}, json_type, 200, None
    yield "missing-everything", {}, json_type, 200, None
    yield "stream_options-include_usage-string", {**BASE, "stream_options": {"include_usage": "yes"}}, json_type, 400, "stream_options.include_usage"
    yield "stream_options-include_usage-object", {**BASE, "stream_options": {"include_usage": {"x": []}}}, json_type, 400, "stream_options.include_usage"
    yield "stop-list-of-number", {**BASE, "stop": [1]}, json_type, 400, "stop"
    yield "stop-list-of-null", {**BASE, "stop": [None]}, json_type, 400, "stop"
    yield "stop-list-of-list", {**BASE, "stop": [["a"]]}, json_type, 400, "stop"
    # Values out of range.
    for field, values in {
        "max_tokens": [-1, 17], "temperature": [-0.5, -1e-300], "logprobs": [-1, 21], "top_p": [0, -0.1, 1.5, 1.0000001], "top_k": [0, -5],
        "seed": [-1, 2**63], "stop": ["", [""], ["a", "b", "c", "d", "e"], ["x"] * 10_000],
        "model": ["gpt-4", "", NAME + " ", "\ud800"],
    }.items():
        for value in values:
            yield f"range-{field}-{json.dumps(value)[:24]}", {**BASE, field: value}, json_type, 404 if field == "model" else 400, field
    for field, value in [("temperature", 0), ("temperature", 1e-300), ("temperature", 5e-324), ("temperature", 1e-40),
                         ("temperature", 1e-4), ("top_p", 1e-300), ("top_k", 1), ("seed", 2**63 - 1), ("stop", ["a", "b", "c", "d"]),
                         ("max_tokens", 0), ("logprobs", 0), ("logprobs", 20), ("echo", True)]:
        yield f"edge-{field}-{json.dumps(value)[:24]}", {**BASE, field: value}, json_type, 200, None
    for raw, field in [(b'{"temperature": NaN}', "temperature"), (b'{"temperature": Infinity}', "temperature"),
                       (b'{"top_p": -Infinity}', "top_p"), (b'{"temperature": 1e400}', "temperature"), (b'{"seed": 1e400}', "seed")]:
        yield f"non-finite-{raw.decode()}", raw, json_type, 400, field
    # Huge values of every numeric field.
    for field, answers in HUGE_ANSWERS.items():
        for value, status in zip(HUGE, answers, strict=True):
            yield f"huge-{field}-{value:.0e}", {**BASE, field: value}, json_type, status, field if status != 200 else None
    # Huge strings, and bodies past the limit.
    yield "huge-user", {**BASE, "user": "u" * 500_000}, json_type, 200, None
    yield "huge-stop", {**BASE, "stop": "s" * 500_000}, json_type, 200, None
    yield "huge-model", {**BASE, "model": "m" * 500_000}, json_type, 404, "model"
    yield "huge-unknown-field", {**BASE, "f" * 100_000: 1}, json_type, 400, "f" * 100_000
    yield "body-over-1MB", {**BASE, "user": "u" * 1_000_000}, json_type, 413, None
    # OpenAI's fields that this server does not implement: taken at their no-op values, else refused.
    yield "no-ops-all-at-once", {**BASE, **NO_OPS}, json_type, 200, None
    for field, value in {"presence_penalty": -0.0, "frequency_penalty": 0, "logit_bias": {}, "n": 1}.items():
        yield f"no-op-{field}-{json.dumps(value)}", {**BASE, field: value}, json_type, 200, None
    for field, values in UNSUPPORTED.items():
        for value in values:
            yield f"unsupported-{field}-{json.dumps(value)}", {**BASE, field: value}, json_type, 400, field
    # Fields this server does not know: ignoring one could change what the client gets.
    for name in ["foo", "Prompt", "max_new_tokens", "messages", "functions", "", " prompt", "\ud800", "prompt\x00"]:
        yield f"unknown-{name!r}", {**BASE, name: 1}, json_type, 400, name
    yield "unknown-stream_options-key", {**BASE, "stream_options": {"include_usage": True, "x": 1}}, json_type, 400, "stream_options.x"
    yield "duplicate-key-last-wins", b'{"prompt": "Once", "max_tokens": 2, "max_tokens": -1}', json_type, 400, "max_tokens"
    # Prompts that cannot fit, refused in characters (before tokenizing) or in tokens.
    yield "prompt-past-the-character-bound", {**BASE, "prompt": "a" * 5_000}, json_type, 400, "prompt"
    yield "prompt-past-the-token-limit", {**BASE, "prompt": "\U0001f436" * MAX_PROMPT_TOKENS}, json_type, 400, "prompt"


ROWS = list(rows())


def test_the_table_covers_every_field_and_kind():
    assert set(TAKES) == FIELDS
    ids = [row[0] for row in ROWS]
    assert len(ids) == len(set(ids)) and len(ROWS) > 200


@pytest.mark.parametrize("body, content_type, status, param", [pytest.param(*row[1:], id=row[0]) for row in ROWS])
def test_hostile_requests(client, body, content_type, status, param):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/v1/completions", content=body_bytes(body), headers=headers)
    assert response.status_code == status, response.text
    answer = json.loads(response.content.decode("utf-8"))  # strict UTF-8 however odd the request
    if status == 200:
        assert answer["object"] == "text_completion" and answer["choices"][0]["finish_reason"] in ("length", "stop")
        return
    error = answer["error"]
    assert error["param"] == (param.encode("utf-8", "backslashreplace").decode() if param is not None else None), error
    assert error["type"] == "invalid_request_error" and error["message"]
    if param and param.replace(".", "_").isidentifier():
        assert param.split(".")[-1][:30] in error["message"]


INSPECT_ROWS = [row for row in ROWS if row[3] in (400, 413, 415) and row[4] in (None, "Content-Type")] + [
    ("inspect-text-past-the-character-bound", {"text": "a" * 5_000}, "application/json", 400, "text"),
    ("inspect-unknown-field", {"text": "Once", "prompt": "Once"}, "application/json", 400, "prompt"),
    ("inspect-text-array", {"text": ["Once"]}, "application/json", 400, "text"),
]


@pytest.mark.parametrize("body, content_type, status, param", [pytest.param(*row[1:], id=row[0]) for row in INSPECT_ROWS])
def test_hostile_inspections(client, body, content_type, status, param):
    """POST /v1/inspect reads its body the same way: the rows about the body itself, and its text's bound."""
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/v1/inspect", content=body_bytes(body), headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    "method, path, status",
    [("GET", "/v1/completions", 405), ("PUT", "/v1/completions", 405), ("DELETE", "/v1/completions", 405),
     ("POST", "/health", 405), ("POST", "/v1/models", 405), ("POST", "/", 405), ("GET", "/v1/nothing", 404),
     ("POST", "/v1/chat/completions", 404), ("GET", "/static/../../../etc/passwd", 404), ("GET", "/static/nothing.js", 404)],
)
def test_wrong_methods_and_paths(client, method, path, status):
    response = client.request(method, path, content=body_bytes(BASE), headers={"Content-Type": "application/json"})
    assert response.status_code == status and response.json()["error"]["message"]


# ---------------------------------------------------------------- prompts


def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(sampler, client, monkeypatch):
    """The bound is the token limit times the longest token's text: as tight as it can be for this vocabulary."""
    tokenizer = sampler.tokenizer
    texts = [tokenizer.decode([t]) for t in range(tokenizer.eot_id)]  # every id but end-of-text (ASCII here)
    longest = max(texts, key=len)
    prompts = Prompts(sampler, Limits(max_prompt_tokens=MAX_PROMPT_TOKENS))
    assert len(longest) > 1 and prompts.max_chars == MAX_PROMPT_TOKENS * len(longest)
    calls = []
    real = type(tokenizer).encode
    monkeypatch.setattr(type(tokenizer), "encode", lambda self, text: calls.append(len(text)) or real(self, text))
    refused = client.post("/v1/completions", json={**BASE, "prompt": "a" * (prompts.max_chars + 1)})
    assert refused.status_code == 400 and f"at most {prompts.max_chars} characters" in refused.json()["error"]["message"]
    assert calls == []
    fits = longest * MAX_PROMPT_TOKENS  # as many characters as the bound allows, and no more tokens than the limit
    answer = client.post("/v1/completions", json={**BASE, "prompt": fits})
    assert answer.status_code == 200 and answer.json()["usage"]["prompt_tokens"] == MAX_PROMPT_TOKENS
    assert calls == [len(fits)]


def test_tokenizing_runs_off_the_event_loop(sampler, client, monkeypatch):
    """/health answers while a prompt is being tokenized: the tokenizer is held until it has."""
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()
    real = type(sampler.tokenizer).encode

    def held(self, text):
        entered.set()
        release.wait(5)
        finished.set()
        return real(self, text)

    monkeypatch.setattr(type(sampler.tokenizer), "encode", held)
    answers = []
    thread = threading.Thread(target=lambda: answers.append(client.post("/v1/completions", json=BASE).status_code))
    thread.start()
    try:
        assert entered.wait(30)
        assert client.get("/health").json()["status"] == "ok"
        assert not finished.is_set(), "/health waited for the tokenizer: it ran on the event loop"
    finally:
        release.set()
        thread.join(30)
    assert answers == [200]


# ---------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def server(sampler, tmp_path_factory):
    """`tinygpt serve` on the fixture's model with a 1,000-byte body limit; yields (host, port, its stderr so far)."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    sampler.tokenizer.save(run / "tokenizer")
    config = dump_toml(Config(model=sampler.model.cfg, tokenizer=TokenizerConfig(kind="bpe", vocab_size=sampler.tokenizer.vocab_size)))
    save_checkpoint(Run(run).step_folder(1), {"model": sampler.model.state_dict(), "progress": {"step": 1}}, config, run / "tokenizer")
    log = run.parent / "serve.log"
    command = [sys.executable, "-m", "tinygpt", "serve", str(run), "--port", "0", "--device", "cpu", "--max-body-bytes", "1000"]
    with log.open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        url = next((m for line in process.stdout if (m := re.search(r"http://(127\.0\.0\.1):(\d+)/", line))), None)
        assert url, f"tinygpt serve printed no URL; its stderr:\n{log.read_text()}"
        yield url.group(1), int(url.group(2)), log.read_text
    finally:
        process.terminate()
        process.wait(10)


def exchange(address, head: bytes, body: bytes = b"", close_after_send: bool = False) -> bytes:
    """Send a request's head and (part of) its body on a new connection; what comes back before the server closes."""
    with socket.create_connection(address, timeout=30) as conn:
        conn.sendall(head + body)
        if close_after_send:
            return b""
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        return received


def request_head(extra: str) -> bytes:
    return f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n{extra}\r\n".encode()


def test_bodies_over_the_limit_are_refused_before_they_arrive(server):
    host, port, _ = server
    # 32 MB announced, 10 bytes sent: the answer comes without the rest (and without "100 Continue").
    for expect in ("", "Expect: 100-continue\r\n"):
        answer = exchange((host, port), request_head(f"Content-Length: 32000000\r\n{expect}"), b'{"prompt":')
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert b"over 1000 bytes" in answer and b"100 Continue" not in answer
    # Chunked, no length announced: refused once 1,500 bytes of a 100,000-byte chunk are in.
    answer = exchange((host, port), request_head("Transfer-Encoding: chunked\r\n"), f"{100_000:x}\r\n".encode() + b" " * 1500)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    with httpx.Client(base_url=f"http://{host}:{port}") as http:
        assert http.post("/v1/completions", json=BASE).status_code == 200


def test_a_client_that_leaves_halfway_through_its_body_is_one_line_in_the_log(server):
    host, port, stderr = server
    before = stderr()
    exchange((host, port), request_head("Content-Length: 500\r\n"), b'{"prompt": "Once upon', close_after_send=True)
    with httpx.Client(base_url=f"http://{host}:{port}") as http:
        assert http.get("/health").json()["status"] == "ok"
    deadline = time.monotonic() + 10
    while not stderr()[len(before) :] and time.monotonic() < deadline:  # logged when the server notices the closed connection
        time.sleep(0.05)
    new = stderr()[len(before) :]
    lines = new.splitlines()
    assert len(lines) == 1 and "left before sending the whole body of POST /v1/completions (500 bytes announced)" in lines[0], new
    assert "Traceback" not in stderr()
