"""The HTTP API of `tinygpt serve`, in process: response shapes, streaming, sampling parity
with Sampler, every refused request, the queue limit and what a disconnect frees."""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
import httpx  # after the skip: httpx and uvicorn come with the serve and dev extras
import torch
import uvicorn
from fastapi.testclient import TestClient

from tinygpt import serve
from tinygpt.analysis import Inspector
from tinygpt.checkpoint import save_checkpoint
from tinygpt.config import Config, ModelConfig, TokenizerConfig, dump_toml
from tinygpt.engine import Engine
from tinygpt.evaluate import evaluate_path
from tinygpt.generate import Sampler, StopText
from tinygpt.model import GPT
from tinygpt.run import Run
from tinygpt.serve import Limits, create_app, default_name
from tinygpt.tokenizers import train_tokenizer

CORPUS = ["Once upon a time, a little fox found a red ball.", "The cat sat on the warm mat. They played all day!"]
NAME = "tiny-test"


@pytest.fixture(scope="module")
def sampler() -> Sampler:
    """A random char-level model that never ends a story by itself (see `ending`)."""
    tokenizer = train_tokenizer("char", CORPUS, 0)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16, bias_head=True)
    model = GPT(cfg).eval()
    with torch.no_grad():
        model.lm_head.bias[tokenizer.eot_id] = -1e4
    return Sampler(model, tokenizer, dtype="float32")  # exact: logprobs are compared with the model's own


@contextlib.contextmanager
def ending(sampler: Sampler):
    """Make <|endoftext|> the only likely token for a while."""
    bias = sampler.model.lm_head.bias
    with torch.no_grad():
        bias[sampler.tokenizer.eot_id] = 1e4
    try:
        yield
    finally:
        with torch.no_grad():
            bias[sampler.tokenizer.eot_id] = -1e4


@pytest.fixture(scope="module")
def client(sampler):
    with TestClient(create_app(sampler, NAME, Limits(max_tokens=64, max_prompt_tokens=40))) as c:
        yield c


@pytest.fixture
def slow(monkeypatch):
    """Engine steps of 10 ms at least, so that a test can act while generation runs."""
    real = Engine.step

    def slow_step(self):
        time.sleep(0.01)
        return real(self)

    monkeypatch.setattr(Engine, "step", slow_step)


def complete(client, **body) -> dict:
    response = client.post("/v1/completions", json={"prompt": "Once", "max_tokens": 12, **body})
    assert response.status_code == 200, response.text
    return response.json()


def events(text: str) -> list:
    """The `data:` payloads of a server-sent event stream, JSON-decoded except [DONE]."""
    blocks = [b for b in text.split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks), text
    return [b[6:] if b[6:] == "[DONE]" else json.loads(b[6:]) for b in blocks]


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---------------------------------------------------------------- shapes


def test_health_and_models(client, sampler):
    assert client.get("/health").json() == {"status": "ok", "model": NAME, "running": 0, "waiting": 0, "limit": 32, "cancelled": 0}
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    (card,) = models["data"]
    assert card["id"] == NAME and card["object"] == "model" and card["owned_by"] == "tinygpt"
    assert card["tinygpt"]["parameters"] == sampler.model.num_params()
    assert card["tinygpt"]["tokenizer"] == "char" and card["tinygpt"]["max_tokens"] == 64


def test_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert len(assets) == 4  # the playground's and the Inspect view's script and style
    for text in [page.text] + [client.get(a).text for a in assets]:
        assert not re.search(r"(src|href)=\"(https?:)?//|url\(\s*['\"]?(https?:)?//|@import", text), "fetches from the internet"


def test_completion_shape(client):
    body = complete(client, seed=1)
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion" and body["model"] == NAME
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] == "length"
    assert choice["text"]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16}


def test_stream_events_match_the_whole_response(client):
    whole = complete(client, seed=3, max_tokens=20)
    response = client.post("/v1/completions", json={"prompt": "Once", "max_tokens": 20, "seed": 3, "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    *chunks, done = events(response.text)
    assert done == "[DONE]"
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert len(chunks) > 2, "text arrives piece by piece (tokens that arrive while the event loop is busy go out together)"

    with_usage = client.post("/v1/completions", json={"max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}})
    usage = events(with_usage.text)[-2]
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 0, "completion_tokens": 5, "total_tokens": 5}


def test_same_seed_same_text_and_parity_with_sampler(client, sampler):
    texts = [complete(client, seed=s, max_tokens=30)["choices"][0]["text"] for s in (7, 7, 8)]
    assert texts[0] == texts[1] != texts[2]
    assert texts[0] == sampler.generate("Once", max_new_tokens=30, temperature=1.0, seed=7)
    nucleus = complete(client, seed=7, max_tokens=30, temperature=0.7, top_p=0.5, top_k=5)["choices"][0]["text"]
    assert nucleus == sampler.generate("Once", max_new_tokens=30, temperature=0.7, top_p=0.5, top_k=5, seed=7)


def test_temperature_zero_and_below_1e_4_are_greedy(client, sampler):
    """Before, a temperature of 1e-300 drew an id past the vocabulary: HTTP 500."""
    texts = {complete(client, temperature=t, seed=s, max_tokens=30)["choices"][0]["text"] for s in (1, 2) for t in (0, 1e-300, 5e-5)}
    assert texts == {sampler.generate("Once", max_new_tokens=30, temperature=0)}


def test_end_of_text_finishes_with_stop(client, sampler):
    with ending(sampler):
        body = complete(client, max_tokens=10)
    assert body["choices"] == [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"]["completion_tokens"] == 1


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_cut_the_text(client, stream):
    greedy = complete(client, temperature=0, max_tokens=40)["choices"][0]["text"]
    stop = greedy[10:13]
    expected = greedy[: greedy.find(stop)]
    response = client.post(
        "/v1/completions",
        json={"prompt": "Once", "max_tokens": 40, "temperature": 0, "stop": ["never here", stop], "stream": stream},
    )
    if stream:
        chunks = events(response.text)[:-1]
        text, finish = "".join(c["choices"][0]["text"] for c in chunks), chunks[-1]["choices"][0]["finish_reason"]
    else:
        text, finish = response.json()["choices"][0]["text"], response.json()["choices"][0]["finish_reason"]
    assert (text, finish) == (expected, "stop")


def test_stop_text_holds_back_a_possible_stop_string():
    stops = StopText(("</s>", "THE END"))
    assert [stops.push(p) for p in ("ab", "c<", "/", "x", "THE", " E")] == ["ab", "c", "", "</x", "", ""]
    assert stops.flush() == "THE E" and not stops.hit
    stops = StopText(("</s>",))
    assert [stops.push(p) for p in ("a</", "s>b", "c")] == ["a", "", ""] and stops.hit


# ---------------------------------------------------------------- logprobs and echo


@torch.no_grad()
def raw_logprobs(sampler: Sampler, ids: list[int]) -> torch.Tensor:
    """The model's log-probabilities (T, V) after each of ids, no temperature or filter."""
    return sampler.model(torch.tensor([ids]))[0][0].log_softmax(-1)


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_are_the_raw_distributions(client, sampler, stream):
    """Sampled at temperature 0.7 with top_k 3, but scored as the model's own distribution."""
    body = {"prompt": "Once", "max_tokens": 12, "temperature": 0.7, "top_k": 3, "seed": 5, "logprobs": 3}
    if stream:
        chunks = events(client.post("/v1/completions", json={**body, "stream": True}).text)[:-1]
        text = "".join(c["choices"][0]["text"] for c in chunks)
        parts = [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"]]
        logprobs = {key: [x for part in parts for x in part[key]] for key in parts[0]}
    else:
        choice = complete(client, **body)["choices"][0]
        text, logprobs = choice["text"], choice["logprobs"]
    assert text == sampler.generate("Once", max_new_tokens=12, temperature=0.7, top_k=3, seed=5)
    tokenizer = sampler.tokenizer
    assert "".join(logprobs["tokens"]) == text  # a char tokenizer spells each token as its character
    assert logprobs["text_offset"] == [len(text[:i]) for i in range(len(text))]
    ids = sampler.encode("Once") + tokenizer.encode(text)
    expected = raw_logprobs(sampler, ids)[len(ids) - 13 : -1]  # the positions that predicted the 12 tokens
    for i, (lp, top) in enumerate(zip(logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True)):
        assert math.isclose(lp, expected[i, ids[len(ids) - 12 + i]].item(), abs_tol=1e-5)
        best = expected[i].topk(3)
        assert list(top) == [tokenizer.decode([j]) for j in best.indices.tolist()]
        assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(top.values(), best.values.tolist(), strict=True))


def test_echo_returns_the_prompt_and_scores_it(client, sampler):
    plain = complete(client, prompt="The cat", max_tokens=5, seed=2)["choices"][0]["text"]
    echoed = complete(client, prompt="The cat", max_tokens=5, seed=2, echo=True)["choices"][0]
    assert echoed["text"] == "The cat" + plain and echoed["logprobs"] is None

    scored = complete(client, prompt="The cat", max_tokens=0, echo=True, logprobs=0)
    choice = scored["choices"][0]
    assert choice["text"] == "The cat" and choice["finish_reason"] == "length"
    assert choice["logprobs"]["tokens"] == list("The cat") and choice["logprobs"]["text_offset"] == list(range(7))
    assert choice["logprobs"]["top_logprobs"] == [{}] * 7
    ids = sampler.encode("The cat")
    expected = raw_logprobs(sampler, ids)
    first = choice["logprobs"]["token_logprobs"][0]  # given the end-of-text token (OpenAI: null)
    assert math.isclose(first, expected[0, ids[1]].item(), abs_tol=1e-5)
    assert scored["usage"] == {"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7}


def test_echoed_logprobs_add_up_to_what_eval_measures(sampler, client, tmp_path):
    """lm-evaluation-harness's request (echo, logprobs, max_tokens 0) against `tinygpt eval` on the same text.

    Both score the text's tokens after the end-of-text token, the one rule for where a text
    starts; a file without a separator line gets no end-of-text token invented after it."""
    text = "The cat sat on the warm mat."
    (tmp_path / "doc.txt").write_text(text, encoding="utf-8")
    sampler.tokenizer.save(tmp_path / "tok")
    config = dump_toml(Config(model=sampler.model.cfg, tokenizer=TokenizerConfig(kind="char")))
    state = {"model": sampler.model.state_dict(), "progress": {"step": 1}}
    folder = save_checkpoint(Run(tmp_path / "run").step_folder(1), state, config, tmp_path / "tok")
    result = evaluate_path(str(folder), str(tmp_path / "doc.txt"), device="cpu")

    scores = complete(client, prompt=text, max_tokens=0, echo=True, logprobs=0)["choices"][0]["logprobs"]["token_logprobs"]
    assert result["tokens"] == len(scores) == len(text)
    assert math.isclose(sum(scores), -result["loss"] * result["tokens"], rel_tol=1e-4)
    assert math.isclose(result["bpb"], -sum(scores) / math.log(2) / len(text.encode()), rel_tol=1e-4)


def test_tokens_inside_a_character_are_spelled_as_bytes():
    tokenizer = train_tokenizer("bpe", CORPUS * 20, 270)
    spelled = serve.spellings(tokenizer)
    ids = tokenizer.encode("a 🐶")  # never seen: four byte tokens
    assert [spelled[i] for i in ids][-4:] == ["bytes:\\xf0", "bytes:\\x9f", "bytes:\\x90", "bytes:\\xb6"]
    assert spelled[tokenizer.eot_id] == "<|endoftext|>\n"


# ---------------------------------------------------------------- refused requests


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b"", 400, None),
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        ({"prompt": 5}, 400, "prompt"),
        ({"max_tokens": "5"}, 400, "max_tokens"),
        ({"max_tokens": 2.5}, 400, "max_tokens"),
        ({"max_tokens": -1}, 400, "max_tokens"),
        ({"max_tokens": 65}, 400, "max_tokens"),
        ({"temperature": "hot"}, 400, "temperature"),
        ({"temperature": -0.5}, 400, "temperature"),
        (b'{"temperature": 1e400}', 400, "temperature"),
        (b'{"temperature": NaN}', 400, "temperature"),
        ({"top_p": 0}, 400, "top_p"),
        ({"top_p": 1.5}, 400, "top_p"),
        ({"top_p": True}, 400, "top_p"),
        ({"top_k": 0}, 400, "top_k"),
        ({"seed": -1}, 400, "seed"),
        ({"seed": 2**63}, 400, "seed"),
        ({"logprobs": 21}, 400, "logprobs"),
        ({"logprobs": -1}, 400, "logprobs"),
        ({"logprobs": True}, 400, "logprobs"),
        ({"echo": "yes"}, 400, "echo"),
        ({"echo": True, "logprobs": 1, "prompt": "a" * 32}, 400, "prompt"),  # 32 tokens after the end-of-text: past the context
        ({"stream": "yes"}, 400, "stream"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, 400, "stream_options.include_usage"),
        ({"stop": ""}, 400, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"stop": [1]}, 400, "stop"),
        ({"model": "gpt-4"}, 404, "model"),
        ({"prompt": "Once upon a snowman ☃"}, 400, "prompt"),  # the char tokenizer never saw ☃
        ({"prompt": "a" * 41}, 400, "prompt"),
        (b'{"prompt": "Once \\ud800"}', 400, "prompt"),  # half a surrogate pair: byte-level BPE would raise TypeError
    ],
)
def test_bad_requests_name_the_field(client, body, status, param):
    kwargs = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    response = client.post("/v1/completions", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert param.split(".")[-1] in error["message"] or param == "prompt"


def test_unknown_paths_and_methods_get_json_errors(client):
    for response in (client.get("/v1/nothing"), client.get("/v1/completions")):
        assert response.status_code in (404, 405) and response.json()["error"]["message"]


def test_a_failing_generation_is_an_error_not_a_stuck_worker(client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Engine, "_decode", broken)
    response = client.post("/v1/completions", json={"prompt": "Once"})
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    streamed = events(client.post("/v1/completions", json={"stream": True}).text)
    assert "out of memory" in streamed[0]["error"]["message"] and streamed[-1] == "[DONE]"
    monkeypatch.undo()
    assert complete(client)["usage"]["completion_tokens"] == 12


# ---------------------------------------------------------------- the queue


def test_queue_limit_and_disconnect_frees_the_place(sampler, slow):
    with TestClient(create_app(sampler, NAME, Limits(max_tokens=1000, queue=2, max_batch=1))) as client:
        request = {"prompt": "Once", "max_tokens": 1000, "stream": True}
        with client.stream("POST", "/v1/completions", json=request) as first:
            lines = first.iter_lines()  # kept: a dropped iterator would close the response
            next(lines)  # generating
            with client.stream("POST", "/v1/completions", json=request) as second:
                assert second.status_code == 200  # admitted, waiting for the worker
                assert client.get("/health").json() == {"status": "ok", "model": NAME, "running": 1, "waiting": 1, "limit": 2, "cancelled": 0}
                refused = client.post("/v1/completions", json={"prompt": "Once"})
                assert refused.status_code == 429
                assert refused.json()["error"]["type"] == "rate_limit_error"
                first.close()  # the first client leaves mid-stream: its generation stops, the second's starts
                second_runs = {"status": "ok", "model": NAME, "running": 1, "waiting": 0, "limit": 2, "cancelled": 1}
                # (the engine frees the first row at its next step, then the second request takes it)
                wait_for(lambda: client.get("/health").json() == second_runs)
                with client.stream("POST", "/v1/completions", json=request) as third:
                    assert third.status_code == 200  # the first one's place
        wait_for(lambda: client.get("/health").json() | {"cancelled": 0} == {"status": "ok", "model": NAME, "running": 0, "waiting": 0, "limit": 2, "cancelled": 0})


@pytest.fixture
def live_server(sampler, slow):
    """The app behind a real uvicorn on a free port, in a thread: disconnects are real TCP closes."""
    sock = serve._listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(sampler, NAME, Limits(max_tokens=1000)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    yield sock.getsockname()
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_cancels_the_generation(live_server, stream):
    host, port = live_server
    body = json.dumps({"prompt": "Once", "max_tokens": 1000, "stream": stream}).encode()
    with httpx.Client(base_url=f"http://{host}:{port}") as http:
        with socket.create_connection((host, port)) as conn:
            conn.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            )
            wait_for(lambda: http.get("/health").json()["running"] == 1)
            received = b""
            while stream and b"data: " not in received:
                received += conn.recv(4096)
        started = time.monotonic()
        idle = {"status": "ok", "model": NAME, "running": 0, "waiting": 0, "limit": 32, "cancelled": 1}
        wait_for(lambda: http.get("/health").json() == idle)
        assert time.monotonic() - started < 5, "1000 tokens take 10 s or more: the generation was dropped, not finished"


# ---------------------------------------------------------------- POST /v1/inspect and GET /v1/samples


def test_inspect_answers_the_tokens_then_one_position(client, sampler):
    text = "Once upon a time, a little fox found a"  # 38 characters, under the limit of 40: two windows of 32
    first = client.post("/v1/inspect", json={"text": text})
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["object"] == "inspection" and answer["model"] == NAME and answer["windows"] == 2
    assert answer["n_tokens"] == len(text) and "".join(t["text"] for t in answer["tokens"]) == text  # char tokens
    inspector = Inspector(sampler.model, sampler.tokenizer)
    assert answer["bits"] == pytest.approx(inspector.score(inspector.encode(text)).total_bits, abs=1e-3)
    token = answer["tokens"][3]
    assert len(token["top"]) == 5 and len(token["lens"]) == 1 and token["lens"][0][0] == token["rank"]

    second = client.post("/v1/inspect", json={"text": text, "position": 3, "top_k": 3}).json()
    assert second["object"] == "inspection.position" and second["token"] == {"id": token["id"], "text": "e"}
    assert [k.get("text") for k in second["keys"]] == ["<|endoftext|>\n", "O", "n", "c", "e"]
    assert len(second["attention"]) == 1 and len(second["attention"][0]) == 2 and len(second["attention"][0][0]) == 5
    assert len(second["lens"][0]["top"]) == 3 and second["next"]["text"] == " "
    later = client.post("/v1/inspect", json={"text": text, "position": 35, "layer": 0, "head": 1}).json()
    assert later["key_start"] == 32 and later["heads"] == [1] and len(later["attention"][0][0]) == 36 - 32 + 1


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({}, 400, "text"),
        ({"text": 5}, 400, "text"),
        ({"text": "a snowman ☃"}, 400, "text"),
        ({"text": "a" * 41}, 400, "text"),
        ({"text": "abc", "top_k": 0}, 400, "top_k"),
        ({"text": "abc", "top_k": 21}, 400, "top_k"),
        ({"text": "abc", "position": 3}, 400, "position"),
        ({"text": "abc", "position": -1}, 400, "position"),
        ({"text": "abc", "position": "1"}, 400, "position"),
        ({"text": "abc", "layer": 0}, 400, "position"),
        ({"text": "abc", "position": 0, "layer": 1}, 400, "layer"),
        ({"text": "abc", "position": 0, "head": 2}, 400, "head"),
        ({"text": "abc", "model": "gpt-4"}, 404, "model"),
    ],
)
def test_bad_inspections_name_the_field(client, body, status, param):
    response = client.post("/v1/inspect", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]


def test_inspections_wait_in_the_generation_queue(sampler, slow):
    with TestClient(create_app(sampler, NAME, Limits(max_tokens=1000, queue=1))) as client:
        with client.stream("POST", "/v1/completions", json={"prompt": "Once", "max_tokens": 1000, "stream": True}) as busy:
            lines = busy.iter_lines()
            next(lines)  # generating: the one place is taken
            assert client.post("/v1/inspect", json={"text": "Once"}).status_code == 429
        wait_for(lambda: client.get("/health").json()["running"] == 0)
        assert client.post("/v1/inspect", json={"text": "Once"}).status_code == 200


def test_samples_timeline(sampler, tmp_path):
    with TestClient(create_app(sampler, NAME)) as client:
        bare = client.get("/v1/samples").json()
    assert bare["data"] == [] and "bare checkpoint" in bare["note"]
    run = tmp_path / "stories"
    (run / "best").mkdir(parents=True)
    rows = [{"step": 0, "val_bpb": 6.1, "text": "Onxe"}, {"step": 500, "val_bpb": 1.4, "text": "Once upon"}]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 10')  # cut short
    with TestClient(create_app(sampler, NAME, checkpoint=run / "best")) as client:
        assert client.get("/v1/samples").json() == {"object": "list", "data": rows, "note": ""}


def test_twenty_concurrent_clients_are_decoded_together_each_as_alone(live_server, sampler):
    """Greedy and seeded requests of different lengths at once: the engine runs them in one batch
    (/health counts them running together), and each text is the one its request gets alone."""
    host, port = live_server
    bodies = [
        {"prompt": ["Once", "The cat sat", ""][i % 3], "max_tokens": 10 + 3 * i, "temperature": 0 if i % 4 == 0 else 0.9,
         "seed": i, "stream": i % 2 == 0}
        for i in range(20)
    ]
    texts: list = [None] * 20
    most_running = 0

    def one(i: int) -> None:
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=60) as http:
            response = http.post("/v1/completions", json=bodies[i])
            texts[i] = ("".join(c["choices"][0]["text"] for c in events(response.text)[:-1]) if bodies[i]["stream"]
                        else response.json()["choices"][0]["text"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    with httpx.Client(base_url=f"http://{host}:{port}") as http:
        while any(thread.is_alive() for thread in threads):
            most_running = max(most_running, http.get("/health").json()["running"])
    for thread in threads:
        thread.join()
    assert most_running >= 8
    for body, text in zip(bodies, texts, strict=True):
        alone = sampler.generate(body["prompt"], max_new_tokens=body["max_tokens"], temperature=body["temperature"], seed=body["seed"])
        assert text == alone


# ---------------------------------------------------------------- the command


@pytest.mark.parametrize(
    "path, name",
    [("runs/stories", "stories"), ("runs/stories/best", "stories/best"), ("runs/stories/checkpoints/step-0000000100", "stories/step-0000000100")],
)
def test_default_model_name(path, name):
    assert default_name(path) == name


def test_flags_are_checked():
    with pytest.raises(serve.TinyGPTError, match="--queue"):
        Limits(queue=0)
    with pytest.raises(serve.TinyGPTError, match="--port"):
        serve._listen("127.0.0.1", 70000)
