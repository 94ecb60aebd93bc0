"""`tinygpt serve` under huge requests: how long /health waits while one is refused, and how
much larger the server process is afterwards.

The checkpoint has random weights and a byte-level BPE of 4,096 tokens trained on the shared
TinyStories sample: the tokenizer whose cost grows fastest with the text. For each size, one
client sends a JSON body whose prompt is that many bytes of TinyStories text, announcing its
Content-Length as curl and httpx do, while another polls /health every 10 ms. The server's
resident memory (VmRSS, MiB) is read after three small warm-up requests and 0.5 s after each
huge one, with its peak (VmHWM) so far. Linux only (/proc).

    python bench/serve_hostile.py                                          # the default body limit (1 MB)
    python bench/serve_hostile.py --serve-flags "--max-body-bytes 100000000"  # bodies read whole

Prints one JSON line per size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import torch

from baseline import TRAIN, emit
from serve import start_server
from tinygpt.checkpoint import save_checkpoint
from tinygpt.config import Config, ModelConfig, TokenizerConfig, dump_toml
from tinygpt.documents import split_documents
from tinygpt.model import GPT
from tinygpt.run import Run
from tinygpt.tokenizers import train_tokenizer


def write_checkpoint(folder: Path) -> Path:
    """The `tiny` preset's model with random weights over a 4,096-token BPE trained on TRAIN."""
    tokenizer = train_tokenizer("bpe", split_documents(TRAIN.read_text(encoding="utf-8")), 4096)
    tokenizer.save(folder / "tokenizer")
    cfg = ModelConfig(family="gpt2", vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    config = dump_toml(Config(model=cfg, tokenizer=TokenizerConfig(kind="bpe", vocab_size=tokenizer.vocab_size)))
    state = {"model": GPT(cfg).state_dict(), "progress": {"step": 1}}
    return save_checkpoint(Run(folder).step_folder(1), state, config, folder / "tokenizer")


def memory_mib(pid: int) -> dict:
    """The process's resident memory now and at its peak, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: round(int(fields[name].split()[0]) / 1024) for key, name in (("rss_mib", "VmRSS"), ("peak_mib", "VmHWM"))}


def send(address: tuple[str, int], body: bytes, result: dict) -> None:
    """POST body on a raw connection (a server may answer before reading it all, which httpx cannot take)."""
    start = time.perf_counter()
    head = ("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
    answer = b""
    with socket.create_connection(address) as conn:
        try:
            conn.sendall(head.encode() + body)
            while chunk := conn.recv(65536):
                answer += chunk
        except OSError as e:  # the server answered and closed the connection on the rest of the body
            result["connection"] = type(e).__name__
            with contextlib.suppress(OSError):
                while chunk := conn.recv(65536):
                    answer += chunk
    result["seconds"] = round(time.perf_counter() - start, 3)
    result["status"] = int(answer.split(b" ", 2)[1]) if answer else None
    result["answer"] = answer.partition(b"\r\n\r\n")[2][:160].decode(errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[32, 64], help="prompt sizes in MB (default: 32 64)")
    parser.add_argument("--serve-flags", default="", help="more flags for tinygpt serve, e.g. '--max-body-bytes 100000000'")
    args = parser.parse_args()
    stories = TRAIN.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_server(write_checkpoint(Path(tmp)), 1, *args.serve_flags.split())
        address = (urlsplit(url).hostname, urlsplit(url).port)
        try:
            with httpx.Client(base_url=url, timeout=600) as http:
                for _ in range(3):
                    http.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 20}).raise_for_status()
                before = memory_mib(process.pid)["rss_mib"]
                for mb in args.sizes_mb:
                    prompt = (stories * (mb * 10**6 // len(stories) + 1))[: mb * 10**6]
                    body = json.dumps({"prompt": prompt, "max_tokens": 1}).encode()
                    result: dict = {}
                    client = threading.Thread(target=send, args=(address, body, result))
                    client.start()
                    waits = []
                    while client.is_alive():
                        start = time.perf_counter()
                        http.get("/health").raise_for_status()
                        waits.append(time.perf_counter() - start)
                        time.sleep(0.01)
                    client.join()
                    time.sleep(0.5)
                    emit({"prompt_mb": mb, "body_bytes": len(body), "serve_flags": args.serve_flags, **result,
                          "health_polls": len(waits), "health_ms_max": round(max(waits) * 1000, 1),
                          "rss_mib_before": before, **memory_mib(process.pid)})  # fmt: skip
        finally:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
