"""`tinygpt serve`: a story playground in the browser and an OpenAI-style HTTP API over one model.

    GET  /                 the playground page (plain HTML/CSS/JS from src/tinygpt/static/)
    POST /v1/completions   OpenAI's legacy completions, streamed as server-sent events with "stream": true
    POST /v1/inspect       a text's tokens with surprisal, top-5 and logit-lens ranks; with "position",
                           the attention from that token and the logit lens there (tinygpt.analysis)
    GET  /v1/samples       the training run's samples timeline (a sample at every evaluation)
    GET  /v1/models        the one model served, with its size and tokenizer
    GET  /health           liveness, and what the generation queue is doing

One worker thread runs the decoding engine (engine.py): up to `--max-batch` requests are
decoded together, each at its own position with its own sampling parameters and random
generator, joining and leaving between steps, long prompts prefilled in chunks. An inspection
puts hooks on the model, so it runs on the same thread between two decoding steps
(GenerationQueue.call, which any other work that needs the model can use too). Requests
wait first come, first served; at most `--queue` of them are admitted (running or waiting)
and the rest get 429. A request holds its place until its response ends, however it ends: a
client that disconnects gives its place back at once, and the engine drops its sequence
before the next step.

`logprobs` (0 to 20 alternatives) and `echo` follow OpenAI's completions format; the
log-probabilities are those of the model's raw distribution (before temperature, top_k and
top_p), from the function evaluation uses (evaluate.logprobs_and_bits). Every prompt follows
the end-of-text token, so with `echo` the first prompt token is scored given it, where OpenAI
gives null; usage.prompt_tokens counts the prompt's own tokens, not that one.

Hostile input cannot hurt it: a request body over `--max-body-bytes` gets 413 before it is
read whole (at once when its Content-Length says so), a POST body must say it is JSON
(FastAPI's strict rule, which keeps other web pages from posting to a server on localhost), a
prompt that cannot fit is refused before the tokenizer runs, and parsing and tokenizing run
off the event loop, so /health answers while they work. OpenAI's fields are taken at the
values that change nothing; others get 400 naming the field. A client that leaves halfway
through its body is one line in the log.

FastAPI is imported only when the app is built, so the rest of tinygpt works without the
`serve` extra. (For the same reason this module does not use `from __future__ import
annotations`: FastAPI must see the real classes of the handlers' parameters.)
"""

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import math
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .analysis import TOP_K, Inspector, detail_range_error
from .common import TinyGPTError
from .engine import SamplingError, SamplingParams, Sequence, Token, Worker
from .generate import Continuation, Sampler, TextStream, add_dtype_argument
from .run import SAMPLES, find_checkpoint, run_of

STATIC = Path(__file__).parent / "static"
MAX_STOPS = 4  # stop strings per request, as OpenAI allows
MAX_TOP_K = 20  # alternatives per position an inspection may ask for
log = logging.getLogger("uvicorn.error")  # the server's own log: one line each, in uvicorn's format


# ---------------------------------------------------------------- requests


class ApiError(Exception):
    """A refused request: its HTTP status and OpenAI's error body, naming the field at fault.

    The message and param may quote what the client sent, lone surrogates included (JSON can
    spell them); they are written as backslash escapes, so the body is always valid UTF-8.
    """

    def __init__(
        self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error", code: str | None = None
    ):
        super().__init__(message)
        self.status = status
        message, param = (_utf8(text) if text is not None else None for text in (message, param))
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _utf8(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how many may be admitted: the flags of `tinygpt serve`."""

    max_tokens: int = 1024
    max_prompt_tokens: int | None = None  # None: the model's context length
    queue: int = 32
    max_body_bytes: int = 1_000_000  # 1 MB: a request body, JSON and all
    max_batch: int = 16  # requests decoded together

    def __post_init__(self):
        flags = {
            "--max-tokens": self.max_tokens, "--max-prompt-tokens": self.max_prompt_tokens, "--queue": self.queue,
            "--max-body-bytes": self.max_body_bytes, "--max-batch": self.max_batch,
        }
        for flag, value in flags.items():
            if value is not None and value < 1:
                raise TinyGPTError(f"{flag} must be at least 1, got {value}")


@dataclass(frozen=True)
class Completion:
    """A valid /v1/completions request, its prompt already encoded (after the end-of-text token)."""

    prompt: str
    prompt_ids: list[int]
    params: SamplingParams
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    echo: bool


_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict}

# OpenAI's fields that this server does not implement, with the JSON type and the value that
# changes nothing: clients send them at those values, which are taken; others get a 400.
NO_OPS = {
    "n": ("integer", 1),
    "best_of": ("integer", 1),
    "presence_penalty": ("number", 0),
    "frequency_penalty": ("number", 0),
    "logit_bias": ("object", {}),
    "suffix": ("string", None),
}
FIELDS = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options", "user",
    "logprobs", "echo", *NO_OPS,
}
STREAM_OPTIONS = {"include_usage"}


def _field(body: dict, name: str, json_type: str, default, param: str | None = None):
    """body[name] if it has the JSON type; absent or null gives the default (as OpenAI treats null)."""
    value = body.get(name)
    if value is None:
        return default
    is_bool = isinstance(value, bool)  # a bool is an int in Python, never in JSON
    if is_bool != (json_type == "boolean") or not isinstance(value, _JSON_TYPES[json_type]):
        raise ApiError(400, f"{param or name} must be a JSON {json_type}, got {_shown(value)}", param or name)
    if json_type == "number" and not math.isfinite(value):
        raise ApiError(400, f"{param or name} must be a finite number, got {value}", param or name)
    return value


def _shown(value) -> str:
    """What was sent, for an error message: an object or array by its kind (however deep), a scalar as JSON cut short."""
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "an array"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _known_fields(body: dict, fields: set[str], prefix: str = "") -> None:
    """Refuse the first field this server does not know: ignoring it could change what the client gets."""
    unknown = sorted(set(body) - fields)
    if unknown:
        name = prefix + unknown[0]
        raise ApiError(400, f"unknown field {_shown(name)}; this server takes {', '.join(prefix + f for f in sorted(fields))}", name)


async def read_body(request) -> bytes:
    """The raw body of a request that says it is JSON, read whole within the server's limit.

    Raises ApiError 415 unless Content-Type is application/json or application/*+json (as
    FastAPI's strict_content_type rules for its own JSON bodies), and 413 (from BodyLimit)
    past the limit. Every POST route reads its body through this.
    """
    content_type = request.headers.get("content-type", "")
    media = content_type.partition(";")[0].strip().lower()
    if not (media == "application/json" or (media.startswith("application/") and media.endswith("+json"))):
        got = f"got {content_type[:60]!r}" if content_type else "it is missing"
        raise ApiError(415, f"the request body must be JSON with Content-Type: application/json ({got})", "Content-Type")
    return await request.body()


def _json_body(raw: bytes, model_name: str, example: str) -> dict:
    """The request body as a JSON object (UTF-8, -16 or -32, as json.loads detects), for this server's model.

    Run it off the event loop: parsing takes time in proportion to the body.
    """
    if not raw.strip():
        raise ApiError(400, f"the request body is empty: send a JSON object such as {example}")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError, and so is an int of 4,300+ digits
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    model = _field(body, "model", "string", model_name)
    if model != model_name:
        raise ApiError(404, f"model {model!r} is not served here; this server has {model_name!r}", "model", code="model_not_found")
    return body


class Prompts:
    """Texts to token ids within the server's limit, for every route that takes one.

    max_tokens: the longest text in tokens (--max-prompt-tokens, else the context length).
    max_chars: max_tokens times the longest token in UTF-8 bytes (each byte spells at most
    one character; the end-of-text token is never made by encoding text). A longer text
    cannot fit, so it is refused before the tokenizer runs: tokenizing costs time and memory in
    proportion to the text (Hugging Face's tokenizers hold ~100 bytes per token), and this bounds both.
    """

    def __init__(self, sampler: Sampler, limits: Limits):
        self.sampler = sampler
        self.max_tokens = limits.max_prompt_tokens or sampler.block_size
        token_bytes = sampler.tokenizer.token_bytes()
        token_bytes[sampler.tokenizer.eot_id] = 0
        self.max_chars = self.max_tokens * int(token_bytes.max())

    def check_length(self, text: str, param: str) -> None:
        """ApiError 400 naming `param` when the text has more characters than max_tokens tokens can spell."""
        if len(text) > self.max_chars:
            raise ApiError(
                400, f"the {param} is {len(text)} characters; this server takes at most {self.max_tokens} tokens, "
                f"which spell at most {self.max_chars} characters", param,
            )

    def encode(self, prompt: str) -> list[int]:
        """The prompt's ids after the end-of-text token; ApiError 400 naming "prompt" when it is too
        long (the end-of-text token not counted) or cannot be encoded. Run it off the event loop."""
        self.check_length(prompt, "prompt")
        try:
            ids = self.sampler.encode(prompt)
        except TinyGPTError as e:  # invalid Unicode, or characters a char tokenizer never saw
            raise ApiError(400, str(e), "prompt") from None
        if len(ids) - 1 > self.max_tokens:
            raise ApiError(400, f"the prompt is {len(ids) - 1} tokens; this server takes at most {self.max_tokens}", "prompt")
        return ids


def parse_completion(raw: bytes, prompts: Prompts, model_name: str, limits: Limits) -> Completion:
    """Check every field of a request body against OpenAI's meaning and this server's limits.

    Runs off the event loop (it parses JSON and tokenizes); raises ApiError naming the field at fault.
    """
    body = _json_body(raw, model_name, '{"prompt": "Once upon a time"}')
    _known_fields(body, FIELDS)
    for name, (json_type, no_op) in NO_OPS.items():
        value = _field(body, name, json_type, no_op)
        if value != no_op:
            raise ApiError(400, f"{name} {_shown(value)} is not supported here: leave it out or send {json.dumps(no_op)}", name)
    _field(body, "user", "string", None)
    max_tokens = _field(body, "max_tokens", "integer", 16)
    if max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens must be at most {limits.max_tokens} on this server, got {max_tokens}", "max_tokens")
    try:  # the ranges of every entry point: SamplingParams checks them
        params = SamplingParams(
            max_new_tokens=max_tokens,
            temperature=_field(body, "temperature", "number", 1.0),
            top_p=_field(body, "top_p", "number", 1.0),
            top_k=_field(body, "top_k", "integer", None),  # not OpenAI's, but vLLM and llama.cpp take it too
            seed=_field(body, "seed", "integer", None),
            logprobs=_field(body, "logprobs", "integer", None),
        )
    except SamplingError as e:
        name = API_NAMES.get(e.field, e.field)
        raise ApiError(400, f"{name} {e.problem}", name) from None
    echo = _field(body, "echo", "boolean", False)
    stream = _field(body, "stream", "boolean", False)
    options = _field(body, "stream_options", "object", {})
    _known_fields(options, STREAM_OPTIONS, "stream_options.")
    include_usage = _field(options, "include_usage", "boolean", False, "stream_options.include_usage")
    stop = _stop_strings(body.get("stop"))

    prompt = _field(body, "prompt", "string", "")
    prompt_ids = prompts.encode(prompt)
    if echo and params.logprobs is not None and len(prompt_ids) > prompts.sampler.block_size:
        raise ApiError(400, f"a prompt to score must fit the context with the end-of-text token before it: "
                            f"{len(prompt_ids) - 1} tokens, at most {prompts.sampler.block_size - 1}", "prompt")
    return Completion(prompt, prompt_ids, params, stop, stream, include_usage, echo)


API_NAMES = {"max_new_tokens": "max_tokens"}  # SamplingParams' fields that OpenAI names otherwise


@dataclass(frozen=True)
class Inspection:
    """A valid /v1/inspect request: the text's ids (end-of-text first) and what to look at."""

    ids: np.ndarray  # int64: [end-of-text, t_0, ..., t_{n-1}]
    top_k: int
    position: int | None
    layer: int | None
    head: int | None


INSPECT_FIELDS = {"model", "text", "top_k", "position", "layer", "head"}


def parse_inspection(raw: bytes, inspector: Inspector, prompts: Prompts, model_name: str) -> Inspection:
    """Check a /v1/inspect body: "text" (at most the prompt limit in tokens), optional "top_k", and for
    the second request "position" with optional "layer" and "head", all in range. Runs off the event loop."""
    body = _json_body(raw, model_name, '{"text": "Once upon a time"}')
    _known_fields(body, INSPECT_FIELDS)
    text = _field(body, "text", "string", "")
    prompts.check_length(text, "text")
    try:
        ids = inspector.encode(text, prompts.max_tokens)
    except TinyGPTError as e:  # empty, too long, invalid Unicode, characters a char tokenizer never saw
        raise ApiError(400, str(e), "text") from None
    top_k = _field(body, "top_k", "integer", TOP_K)
    if not 1 <= top_k <= MAX_TOP_K:
        raise ApiError(400, f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}", "top_k")
    position, layer, head = (_field(body, name, "integer", None) for name in ("position", "layer", "head"))
    if position is None and (layer is not None or head is not None):
        raise ApiError(400, "layer and head choose which attention to send for a position: give position too", "position")
    if position is not None:
        problem = detail_range_error(inspector.model.cfg, len(ids) - 1, position, layer, head)
        if problem:
            raise ApiError(400, problem[1], problem[0])
    return Inspection(ids, top_k, position, layer, head)


def _stop_strings(stop) -> tuple[str, ...]:
    """OpenAI's `stop`: null, one string, or a list of up to four non-empty strings."""
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
    return tuple(stops)


# ---------------------------------------------------------------- the queue (on the event loop)


@dataclass(frozen=True)
class Piece:
    """Text that can go out now, and the OpenAI logprobs entries of the tokens it came with."""

    text: str
    logprobs: dict | None = None


@dataclass(frozen=True)
class Inspected:
    result: dict  # the JSON answer of an inspection


def answer_inspection(inspector: Inspector, request: Inspection) -> Inspected:
    """The answer to /v1/inspect: the tokens, surprisal, top-k and lens ranks; or, for a position,
    the attention from it and the logit lens there. Runs on the engine's thread, between two steps."""
    if request.position is None:
        return Inspected(inspector.scores_json(inspector.score(request.ids, request.top_k, lens=True)))
    return Inspected(inspector.position_json(request.ids, request.position, request.top_k, request.layer, request.head))


@dataclass(frozen=True)
class Finished:
    reason: str  # OpenAI's finish_reason: "stop" (end of text or a stop string) or "length"
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str


class Logprobs:
    """OpenAI's completions `logprobs` object, built token by token.

    tokens: each token's text, or `bytes:\\xNN...` when it holds part of a UTF-8 character (as
    OpenAI spells them); token_logprobs: nats; top_logprobs: the likeliest alternatives by
    text; text_offset: where the token's text starts in the returned text, in characters.
    """

    def __init__(self, spellings: list[str]):
        self.spellings = spellings

    def entries(self, tokens: list[Token], offsets: list[int]) -> dict:
        spell = self.spellings
        return {
            "tokens": [spell[t.id] for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{spell[i]: lp for i, lp in t.top} for t in tokens],
            "text_offset": offsets,
        }


def spellings(tokenizer) -> list[str]:
    """Each id's text as OpenAI's logprobs spell it: bytes that are not whole UTF-8 characters as `bytes:\\xNN`."""
    out = []
    for piece in tokenizer.vocab_bytes():
        try:
            out.append(piece.decode("utf-8"))
        except UnicodeDecodeError:
            out.append("bytes:" + "".join(f"\\x{b:02x}" for b in piece))
    return out


class Job:
    """One admitted request: its engine sequence, and the text and events made of its tokens on the event loop."""

    def __init__(self, request: Completion, sampler: Sampler, logprobs: Logprobs):
        self.request = request
        self.seq = Sequence(request.prompt_ids, request.params, score_prompt=request.echo and request.params.logprobs is not None)
        self.text = Continuation(self.seq, sampler.tokenizer, request.stop)
        self.logprobs = logprobs if request.params.logprobs is not None else None
        self.sampler = sampler
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def notify(self, seq: Sequence) -> None:
        """Called on the worker thread: the sequence has new tokens or has finished."""
        self._loop.call_soon_threadsafe(self._wake.set)

    def abandon(self) -> None:
        """Called on the event loop when the client has left: the engine drops the sequence before its next step."""
        self.seq.stop()

    @property
    def unanswered(self) -> bool:
        """Still generating, or dropped before its end (not by a stop string)."""
        return self.seq.finish_reason in (None, "cancelled") and not self.text.stops.hit

    async def events(self) -> AsyncIterator[Piece | Finished | Failed]:
        """The echoed prompt (with `echo`, once scored if asked), text pieces as they are generated,
        then one Finished or Failed."""
        offset, echo = 0, self.request.echo
        while True:
            if echo and (not self.seq.score_prompt or len(self.seq.prompt_scores) == len(self.seq.prompt) - 1):
                echo, echoed = False, self._echo()
                offset = len(echoed.text)
                yield echoed
            done = self.seq.done  # before the tokens: the engine appends the last token, then says done
            if not echo:
                tokens, offsets, texts = [], [], []
                for token in self.seq.tokens[self.text.seen :]:
                    start, taken = offset + self.text.decoded, self.text.taken
                    texts.append(self.text.push(token))
                    if self.text.taken > taken:  # it counts (it is not past a stop string)
                        tokens.append(token)
                        offsets.append(start)
                if done:
                    texts.append(self.text.finish())
                text = "".join(texts)
                if text or (tokens and self.logprobs):
                    yield Piece(text, self.logprobs.entries(tokens, offsets) if self.logprobs else None)
            if done:
                reason = self.text.finish_reason
                if reason.startswith("error"):
                    yield Failed(f"generation failed: {reason.removeprefix('error: ')}")
                elif reason == "cancelled":
                    yield Failed("the client disconnected")
                else:
                    yield Finished(reason, self.text.taken)
                return
            await self._wake.wait()
            self._wake.clear()

    def _echo(self) -> Piece:
        """The prompt as text, with its tokens' scores (the first given the end-of-text token) when asked."""
        if not self.logprobs:
            return Piece(self.request.prompt)
        offsets, stream, done = [], TextStream(self.sampler.tokenizer), 0
        for token in self.request.prompt_ids[1:]:
            offsets.append(done)  # a token inside a character starts where the character does
            done += len(stream.push(token))
        return Piece(self.request.prompt, self.logprobs.entries(self.seq.prompt_scores, offsets))


class InspectionJob:
    """One admitted inspection: it runs on the engine's thread between two steps (Worker.call)."""

    def __init__(self, request: Inspection, queue: "GenerationQueue"):
        self.request = request
        self.future = queue.worker.call(lambda: answer_inspection(queue.inspector, request))

    def abandon(self) -> None:
        """The client left: drop the inspection unless it has started."""
        self.future.cancel()

    @property
    def unanswered(self) -> bool:
        return not self.future.done()

    async def events(self) -> AsyncIterator[Inspected | Failed]:
        """The answer, or Failed when the inspection raised."""
        try:
            answer = await asyncio.wrap_future(self.future)
        except Exception as e:  # noqa: BLE001 (a bug or an exhausted device fails this request, never the worker)
            yield Failed(f"inspection failed: {type(e).__name__}: {e}")
            return
        yield answer


class GenerationQueue:
    """The engine's worker thread and the requests admitted to it (running or waiting), at most
    `limit`: generations, decoded together, and inspections, run between two decoding steps.

    Admission and release happen on the event loop, so the count needs no lock; only the
    worker thread touches the model, and call() hands it other work between two steps.
    """

    def __init__(self, sampler: Sampler, limit: int, max_batch: int):
        self.sampler = sampler
        self.inspector = Inspector(sampler.model, sampler.tokenizer, sampler.device)
        self.limit = limit
        self.jobs: set[Job] = set()  # admitted: running or waiting
        self.cancelled = 0  # generations dropped because their client left
        self.worker = Worker(sampler.engine(max_batch))
        self.logprobs = Logprobs(spellings(sampler.tokenizer))

    def admit(self, request: Completion | Inspection) -> Job | InspectionJob:
        if len(self.jobs) >= self.limit:
            raise ApiError(
                429, f"the server is busy: {self.limit} requests are running or waiting; try again shortly",
                kind="rate_limit_error", code="rate_limit_exceeded",
            )
        if isinstance(request, Inspection):
            job = InspectionJob(request, self)
        else:
            job = Job(request, self.sampler, self.logprobs)
            self.worker.submit(job.seq, job.notify)
        self.jobs.add(job)
        return job

    def release(self, job: Job | InspectionJob) -> None:
        """Give the job's place back; if it is still running or waiting, it is dropped. Idempotent."""
        if job in self.jobs and job.unanswered:
            self.cancelled += 1
        job.abandon()
        self.jobs.discard(job)

    async def call(self, fn: Callable[[], object]):
        """fn() on the worker thread between two engine steps (it has the model to itself there); its result."""
        return await asyncio.wrap_future(self.worker.call(fn))

    def status(self) -> dict:
        rows = set(map(id, self.worker.engine.rows))
        running = sum(job.future.running() if isinstance(job, InspectionJob) else id(job.seq) in rows for job in self.jobs)
        waiting = sum(job.unanswered for job in self.jobs) - running
        return {"running": running, "waiting": waiting, "limit": self.limit, "cancelled": self.cancelled}

    def close(self) -> None:
        """Drop every generation and stop the worker (it stops after its current step)."""
        for job in list(self.jobs):
            self.release(job)
        self.worker.close()


# ---------------------------------------------------------------- responses


def _choice(head: dict, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {**head, "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}]}


def _usage(request: Completion, finished: Finished) -> dict:
    prompt = len(request.prompt_ids) - 1  # the prompt's own tokens, not the end-of-text token before them
    completion = finished.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n"


def _server_error(failed: Failed) -> dict:
    return {"error": {"message": failed.message, "type": "server_error", "param": None, "code": None}}


async def event_stream(queue: GenerationQueue, job: Job, head: dict) -> AsyncIterator[str]:
    """OpenAI's completion chunks as server-sent events, ending with `data: [DONE]`.

    The `finally` runs however the response ends: Starlette cancels this generator when the
    client disconnects, which frees the job's place at once.
    """
    try:
        async for event in job.events():
            if isinstance(event, Piece):
                yield _sse(_choice(head, event.text, None, event.logprobs))
            elif isinstance(event, Failed):
                yield _sse(_server_error(event))
            else:
                yield _sse(_choice(head, "", event.reason))
                if job.request.include_usage:
                    yield _sse({**head, "choices": [], "usage": _usage(job.request, event)})
        yield _sse("[DONE]")
    finally:
        queue.release(job)


class BodyLimit:
    """ASGI middleware: no request body, on any route, over `limit` bytes; 413 before it is read whole.

    A Content-Length over the limit is answered before a byte of the body is read (and before
    "100 Continue", so curl sends none); a body without one (chunked) is counted as it arrives
    and refused once past the limit. FastAPI's own max_body_size would do the same, but it
    answers an announced body in plain text in place of any response, and here every error
    is in OpenAI's shape.
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        from starlette.datastructures import Headers
        from starlette.responses import JSONResponse

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = ApiError(413, f"the request body is over {self.limit} bytes, this server's limit (tinygpt serve --max-body-bytes)")
        announced = Headers(scope=scope).get("content-length", "")
        if announced.isdigit() and int(announced) > self.limit:
            return await JSONResponse(too_large.body, status_code=413)(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise too_large  # the app's ApiError handler answers
            return message

        await self.app(scope, counted, send)


def model_card(sampler: Sampler, name: str, limits: Limits) -> dict:
    """/v1/models' entry: OpenAI's fields, plus what the playground shows under "tinygpt"."""
    cfg, tokenizer = sampler.model.cfg, sampler.tokenizer
    return {
        "id": name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "tinygpt",
        "tinygpt": {
            "parameters": sampler.model.num_params(),
            "family": cfg.family,
            "context_length": cfg.block_size,
            "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size,
            "device": sampler.device,
            "max_tokens": limits.max_tokens,
            "max_prompt_tokens": limits.max_prompt_tokens or cfg.block_size,
        },
    }


def create_app(sampler: Sampler, name: str, limits: Limits = Limits(), checkpoint: Path | None = None):
    """The FastAPI app serving `sampler` under the model id `name`; `checkpoint`, the folder it
    was loaded from, finds the training run whose samples timeline GET /v1/samples shows."""
    from fastapi import FastAPI, Request, Response
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    queue = GenerationQueue(sampler, limits.queue, limits.max_batch)
    card = model_card(sampler, name, limits)
    prompts = Prompts(sampler, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        queue.close()

    # No /docs pages: they load their scripts from a CDN, and nothing here may reach the internet.
    app = FastAPI(title="tinygpt", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):  # unknown paths and methods, in OpenAI's shape too
        return JSONResponse(ApiError(e.status_code, str(e.detail)).body, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, e: ClientDisconnect):  # nobody is left to answer
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        announced = request.headers.get("content-length")
        log.warning("%s left before sending the whole body of %s %s%s", client, request.method, request.url.path,
                    f" ({announced} bytes announced)" if announced else "")
        return Response(status_code=400)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, **queue.status()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/samples")
    async def samples():
        from .metrics import read_samples

        run = run_of(checkpoint) if checkpoint else None
        if run is None:
            return {"object": "list", "data": [], "note": "a bare checkpoint, not a training run: there is no samples timeline"}
        rows = read_samples(run)
        note = "" if rows else f"the run {run.name} has no {SAMPLES}: it was trained before tinygpt wrote one"
        return {"object": "list", "data": rows, "note": note}

    @app.post("/v1/completions")
    async def completions(request: Request):
        completion = await run_in_threadpool(parse_completion, await read_body(request), prompts, name, limits)
        job = queue.admit(completion)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": name}
        if completion.stream:
            events = event_stream(queue, job, head)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        *texts, last = await _all_events(queue, job, request)
        if isinstance(last, Failed):
            return JSONResponse(_server_error(last), status_code=500)
        logprobs = _joined([t.logprobs for t in texts]) if completion.params.logprobs is not None else None
        return {**_choice(head, "".join(t.text for t in texts), last.reason, logprobs), "usage": _usage(completion, last)}

    @app.post("/v1/inspect")
    async def inspection(request: Request):
        asked = await run_in_threadpool(parse_inspection, await read_body(request), queue.inspector, prompts, name)
        last = (await _all_events(queue, queue.admit(asked), request))[-1]
        if isinstance(last, Failed):
            return JSONResponse(_server_error(last), status_code=500)
        kind = "inspection" if asked.position is None else "inspection.position"
        return {"object": kind, "model": name, **last.result}

    return app


async def _all_events(queue: GenerationQueue, job, request) -> list:
    """Every event of a job whose answer is sent whole; its place is freed when it ends or its client leaves."""
    watcher = asyncio.create_task(_abandon_on_disconnect(request, job))
    try:
        return [event async for event in job.events()]
    finally:
        watcher.cancel()
        queue.release(job)


def _joined(parts: list[dict | None]) -> dict:
    """The logprobs of a whole response from those of its pieces."""
    keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    return {key: [x for part in parts if part for x in part[key]] for key in keys}


async def _abandon_on_disconnect(request, job: Job) -> None:
    """Free a job whose client left while waiting for its whole completion.

    Streamed responses need no such watch: Starlette already listens for the disconnect.
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.abandon()


# ---------------------------------------------------------------- `tinygpt serve`


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Serve a trained model on this machine: a story playground at / and an OpenAI-style API\n"
        "(POST /v1/completions, streamed with \"stream\": true; POST /v1/inspect; GET /v1/models; GET /health).\n\n"
        "Up to --max-batch requests are decoded together, joining and leaving between steps; an\n"
        "inspection runs between two steps. Up to --queue requests are admitted (running or waiting,\n"
        "first come first served), and more get HTTP 429. A client that disconnects frees its place at\n"
        "once. A prompt follows the end-of-text token, as in training. \"logprobs\": N (0 to 20) and\n"
        "\"echo\": true follow OpenAI.\n\n"
        "  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\\n"
        "       -d '{\"prompt\": \"Once upon a time\", \"max_tokens\": 100, \"temperature\": 0.8}'"
    )
    p.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="a training run folder (uses best/, else the newest checkpoint) or one checkpoint folder")
    p.add_argument("--host", default="127.0.0.1", metavar="HOST", help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to your network)")
    p.add_argument("--port", type=int, default=8000, metavar="PORT", help="port to listen on (default: 8000; 0 picks a free one)")
    p.add_argument("--name", metavar="NAME", help="the model id clients see and send (default: the run folder's name)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 or mps")
    add_dtype_argument(p)
    p.add_argument("--max-tokens", type=int, default=Limits.max_tokens, metavar="N", help=f"most tokens one request may generate (default: {Limits.max_tokens})")
    p.add_argument("--max-prompt-tokens", type=int, metavar="N", help="longest prompt accepted, in tokens (default: the model's context length)")
    p.add_argument("--queue", type=int, default=Limits.queue, metavar="N", help=f"requests running or waiting before new ones get 429 (default: {Limits.queue})")
    p.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes, metavar="N", help=f"largest request body accepted; larger ones get 413 (default: {Limits.max_body_bytes}, 1 MB)")
    p.add_argument("--max-batch", type=int, default=Limits.max_batch, metavar="N", help=f"requests decoded together (default: {Limits.max_batch})")


def run_serve(args: argparse.Namespace) -> int:
    limits = Limits(
        max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens, queue=args.queue,
        max_body_bytes=args.max_body_bytes, max_batch=args.max_batch,
    )
    if not all(importlib.util.find_spec(name) for name in ("fastapi", "uvicorn")):
        raise TinyGPTError("serve needs FastAPI and uvicorn: pip install 'tinygpt[serve]'")
    import uvicorn

    with _listen(args.host, args.port) as sock:  # before loading: a busy port fails at once, not after the model loads
        sampler = Sampler.from_path(args.path, args.device, args.dtype)
        name = args.name or default_name(args.path)
        app = create_app(sampler, name, limits, find_checkpoint(args.path).resolve())
        host, port = sock.getsockname()[:2]
        params = sampler.model.num_params() / 1e6
        print(f"tinygpt serve: {name} ({params:.2f}M parameters, {sampler.tokenizer.kind} tokenizer) on {sampler.device}")
        print(f"  http://{f'[{host}]' if ':' in host else host}:{port}/   (Ctrl-C to stop)", flush=True)
        # A graceful shutdown waits for open connections; a stream left open by a browser tab would hold it forever.
        uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)).run(sockets=[sock])
    return 0


def default_name(path: str | Path) -> str:
    """The run folder's name, plus the checkpoint's when one inside a run was given: 'stories', 'stories/best'."""
    path = Path(path).resolve()
    run = run_of(path)
    return f"{run.name}/{path.name}" if run else path.name


def _listen(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise TinyGPTError(f"--port must be in [0, 65535], got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)[0]
        # proto must say TCP: asyncio turns off Nagle's algorithm only on sockets that do, and with it
        # on, each small response waited ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once on the same port
        sock.bind(address)
        sock.listen()  # from now on a client can connect (it waits for the model to load): the printed URL works at once
    except OSError as e:
        raise TinyGPTError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock
