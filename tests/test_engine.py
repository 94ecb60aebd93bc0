"""Tests for tinygpt.engine: the KV cache the engine owns gives the model's own logits, row by
row at different lengths; rows slide or re-prefill on their own; SamplingParams refuses what
cannot work and decodes greedily below 1e-4; a sequence draws the same tokens alone as among
twenty others joining and leaving; long prompts are prefilled in chunks; the worker thread
runs sequences and other jobs.

Models are tiny and random; their matrices are drawn wide (std 0.5) so that greedy text varies.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading

import pytest
import torch
from torch.nn import functional as F

from tinygpt.common import TinyGPTError
from tinygpt.config import ModelConfig
from tinygpt.engine import (
    GREEDY_BELOW,
    CacheBatch,
    Engine,
    Float16Weight,
    Int8Weight,
    KVCache,
    PackedLinear,
    PackedLlamaBlock,
    SamplingError,
    SamplingParams,
    Sequence,
    Worker,
    decode_dtype,
    decoding_model,
    pack_weight,
    sample_rows,
)
from tinygpt.generate import generate_batch, generate_ids
from tinygpt.model import GPT, apply_rope, rope_cache

V = 48
BLOCK = 16
FAMILIES = {
    "gpt2": ModelConfig("gpt2", V, BLOCK, n_layer=2, n_head=4, n_embd=32),
    "llama": ModelConfig("llama", V, BLOCK, n_layer=2, n_head=4, n_embd=32),
    "llama-gqa-wide-heads": ModelConfig("llama", V, BLOCK, n_layer=2, n_head=4, n_embd=32, n_kv_head=2, head_size=12,
                                        tie_weights=False),
}


def make(cfg: ModelConfig, wide: bool = False) -> GPT:
    torch.manual_seed(0)
    model = GPT(cfg)
    if wide:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.5)
    return model.eval()


def tokens(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def cached_logits(model: GPT, cache: KVCache, start: int, idx: torch.Tensor) -> torch.Tensor:
    """Run idx (B, T) through rows [start, start + B) of the cache at their lengths; logits (B, T, V)."""
    B, T = idx.shape
    logits = model(idx, cache=cache.batch(start, start + B, T))[0]
    for row in range(start, start + B):
        cache.lengths[row] += T
    return logits


# ---------------------------------------------------------------- the KV cache


@pytest.mark.parametrize("name", FAMILIES)
def test_kv_cache_matches_full_forward(name):
    model = make(dataclasses.replace(FAMILIES[name], dropout=0.1))  # dropout is off in eval, cached or not
    idx = tokens(2, BLOCK)
    full = model(idx)[0]
    cache = KVCache(model, rows=2)
    steps = [cached_logits(model, cache, 0, idx[:, :6])]  # prefill
    steps.append(cached_logits(model, cache, 0, idx[:, 6:9]))  # a chunk after the prefill
    steps += [cached_logits(model, cache, 0, idx[:, t : t + 1]) for t in range(9, BLOCK)]  # one token at a time
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert not any("cache" in key for key in model.state_dict())


@pytest.mark.parametrize("name", FAMILIES)
def test_rows_at_different_lengths_decode_together(name):
    """Three rows at lengths 3, 9 and 5 take one token each in one pass, each at its own
    position and seeing only its own past: each row's logits are its sequence's own."""
    model = make(FAMILIES[name])
    seqs = [tokens(1, n + 1, seed=n)[0] for n in (3, 9, 5)]
    cache = KVCache(model, rows=4)
    for row, seq in enumerate(seqs, start=1):  # rows 1..3: row 0 stays empty, a batch need not start at 0
        cached_logits(model, cache, row, seq[None, :-1])
    batch = cache.batch(1, 4, 1)
    assert not batch.uniform and batch.pos.tolist() == [[3], [9], [5]]
    last = torch.stack([seq[-1:] for seq in seqs])  # (3, 1)
    together = cached_logits(model, cache, 1, last)[:, -1]
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(together[row], model(seq[None])[0][0, -1], atol=1e-5, rtol=1e-5)
    assert cache.lengths == [0, 4, 10, 6]


def test_moving_a_row_moves_its_sequence():
    model = make(FAMILIES["llama"])
    seq = tokens(1, 8)
    cache = KVCache(model, rows=3)
    cached_logits(model, cache, 2, seq[:, :7])
    cache.move(2, 0)
    torch.testing.assert_close(cached_logits(model, cache, 0, seq[:, 7:])[0, -1], model(seq)[0][0, -1], atol=1e-5, rtol=1e-5)


def test_llama_cache_runs_past_block_size():
    cfg = dataclasses.replace(FAMILIES["llama"], n_kv_head=2)
    model = make(cfg)
    reference = make(dataclasses.replace(cfg, block_size=24))  # no position parameters: the same model
    reference.load_state_dict(model.state_dict())
    idx = tokens(1, 24)
    cache = KVCache(model, rows=1, max_len=24)
    steps = [cached_logits(model, cache, 0, idx[:, :16])]
    steps += [cached_logits(model, cache, 0, idx[:, t : t + 1]) for t in range(16, 24)]
    torch.testing.assert_close(torch.cat(steps, dim=1), reference(idx)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(TinyGPTError, match="max_len=24"):
        cache.batch(0, 1, 1)


@torch.no_grad()
def next_logits_seeing(model: GPT, token: torch.Tensor, pos: int, kv: list[tuple[torch.Tensor, torch.Tensor]]):
    """Logits for one token (1, 1) at absolute position pos that attends to itself and, in each
    layer, to the given keys and values (1, nkv, S, hs): a llama step spelled out with the model's weights."""
    cfg = model.cfg
    cos, sin = rope_cache(cfg.head_dim, pos + 1, cfg.rope_theta)
    x = model.model.embed_tokens(token)  # (1, 1, C)
    for layer, (k_seen, v_seen) in zip(model.model.layers, kv, strict=True):
        attn = layer.self_attn
        q, k, v = attn.split_heads(attn.qkv(layer.input_layernorm(x)))
        q, k = apply_rope(q, cos[pos], sin[pos]), apply_rope(k, cos[pos], sin[pos])
        group = cfg.n_head // cfg.kv_heads
        k = torch.cat((k_seen, k), dim=2).repeat_interleave(group, dim=1)
        v = torch.cat((v_seen, v), dim=2).repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(q, k, v)  # (1, nh, 1, hs)
        x = x + attn.o_proj(y.transpose(1, 2).reshape(1, 1, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(model.model.norm(x))


@pytest.mark.parametrize("name", ["llama", "llama-gqa-wide-heads"])
@pytest.mark.parametrize("n", [1, 5, 12])
def test_slid_row_scores_as_a_sliding_window(name, n):
    """After slide(row, n), the row's next token sees the kept keys and values as if it sat at
    its old absolute position with the n oldest positions hidden from it; other rows are untouched."""
    model, P = make(FAMILIES[name]), 14
    prefix, nxt = tokens(1, P), tokens(1, 1, seed=2)
    cache = KVCache(model, rows=2)
    cached_logits(model, cache, 1, prefix)
    unshifted = [(cache.k[layer, 1:2, :, :P].clone(), cache.v[layer, 1:2, :, :P].clone()) for layer in range(2)]
    full = model(torch.cat((prefix, nxt), dim=1))[0][:, -1:]
    torch.testing.assert_close(next_logits_seeing(model, nxt, P, unshifted), full, atol=1e-5, rtol=1e-5)

    cache.slide(1, n)
    assert cache.lengths == [0, P - n]
    shifted = cached_logits(model, cache, 1, nxt)
    window = [(k[:, :, n:], v[:, :, n:]) for k, v in unshifted]
    torch.testing.assert_close(shifted, next_logits_seeing(model, nxt, P, window), atol=1e-5, rtol=0)
    assert not torch.allclose(shifted, full, atol=1e-3)  # the dropped positions did matter
    for layer, (_, v) in enumerate(unshifted):
        assert torch.equal(cache.v[layer, 1:2, :, : P - n], v[:, :, n:])  # values move as they are


def test_slide_limits_and_what_gpt2_refuses():
    llama = make(FAMILIES["llama"])
    cache = KVCache(llama, rows=1)
    cached_logits(llama, cache, 0, tokens(1, 10))
    before = cache.k.clone(), cache.v.clone()
    cache.slide(0, 0)
    assert torch.equal(cache.k, before[0]) and torch.equal(cache.v, before[1])
    for n in (11, -1):
        with pytest.raises(TinyGPTError, match="holding 10"):
            cache.slide(0, n)
    cache.slide(0, 10)  # everything: the next token starts afresh
    one = tokens(1, 1)
    torch.testing.assert_close(cached_logits(llama, cache, 0, one), llama(one)[0], atol=1e-5, rtol=1e-5)

    gpt2 = make(FAMILIES["gpt2"])
    with pytest.raises(TinyGPTError, match="block_size"):
        KVCache(gpt2, rows=1, max_len=BLOCK + 1)
    cache = KVCache(gpt2, rows=1)
    cached_logits(gpt2, cache, 0, tokens(1, 6))
    with pytest.raises(TinyGPTError, match="re-prefill"):
        cache.slide(0, 4)  # GPT-2's learned positions cannot slide


def test_a_batch_view_says_what_each_query_sees():
    cache = KVCache(make(FAMILIES["gpt2"]), rows=2)
    assert CacheBatch(cache, 0, [0, 0], 4).causal
    cache.lengths = [2, 2]
    same = cache.batch(0, 2, 1)
    assert same.uniform and same.mask is None and same.pos.tolist() == [[2], [2]]
    chunk = cache.batch(0, 1, 3)  # three tokens after two cached positions: a shifted triangle
    assert chunk.mask.tolist() == [[True, True, True, False, False], [True, True, True, True, False], [True] * 5]


# ---------------------------------------------------------------- SamplingParams


@pytest.mark.parametrize(
    "fields, name",
    [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"max_new_tokens": 2.0}, "max_new_tokens"),
        ({"max_new_tokens": None}, "max_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"stop_at_eot": 1}, "stop_at_eot"),
        ({"logprobs": -1}, "logprobs"),
        ({"logprobs": 21}, "logprobs"),
    ],
)
def test_sampling_params_refuse_what_cannot_work(fields, name):
    with pytest.raises(SamplingError, match=name) as refused:
        SamplingParams(**fields)
    assert refused.value.field == name and "got" in refused.value.problem


def test_sampling_params_are_keyword_only_and_take_their_whole_ranges():
    with pytest.raises(TypeError):
        SamplingParams(10)
    edges = SamplingParams(max_new_tokens=0, temperature=1e300, top_k=1, top_p=1.0, seed=2**63 - 1, logprobs=20)
    assert edges.seed == 2**63 - 1 and not edges.greedy
    assert SamplingParams(temperature=0).greedy and SamplingParams(temperature=GREEDY_BELOW / 2).greedy
    assert not SamplingParams(temperature=GREEDY_BELOW).greedy


@pytest.mark.parametrize("temperature", [0.0, 1e-300, 5e-324, 9.9e-5])
def test_tiny_temperatures_decode_greedily(temperature):
    """Before, 1e-300 divided the logits into inf and NaN and drew an id past the vocabulary."""
    model = make(FAMILIES["llama"], wide=True)
    greedy = list(generate_ids(model, [3], max_new_tokens=20, temperature=0))
    assert list(generate_ids(model, [3], max_new_tokens=20, temperature=temperature, seed=1)) == greedy


def test_small_temperatures_above_the_greedy_bound_stay_in_range():
    logits = torch.tensor([[1e4, 0.0, -1e4, 3e38], [0.0, 0.0, 0.0, 0.0]])
    params = [SamplingParams(temperature=GREEDY_BELOW), SamplingParams(temperature=1e300)]
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    for _ in range(20):
        ids = sample_rows(logits, params, generators)
        assert ids[0] == 3 and 0 <= ids[1] < 4


def test_sampling_follows_the_distribution_and_its_filters():
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    n = 20_000
    g = torch.Generator().manual_seed(0)

    def frequencies(**options) -> torch.Tensor:
        params = SamplingParams(temperature=1.0, **options)
        ids = sample_rows(probs.log().expand(n, 4), [params] * n, [g] * n)
        return torch.bincount(ids, minlength=4) / n

    torch.testing.assert_close(frequencies(), probs, atol=0.015, rtol=0)
    torch.testing.assert_close(frequencies(top_k=2), torch.tensor([4 / 7, 3 / 7, 0, 0]), atol=0.015, rtol=0)
    # top_p 0.5: token 0 (0.4) does not reach it alone, tokens 0 and 1 (0.7) do
    torch.testing.assert_close(frequencies(top_p=0.5), torch.tensor([4 / 7, 3 / 7, 0, 0]), atol=0.015, rtol=0)


def test_a_row_draws_the_same_id_alone_and_in_a_mixed_batch():
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(0)) * 3
    params = [
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.0, seed=1),
        SamplingParams(temperature=0.7, top_k=5, seed=2),
        SamplingParams(temperature=1.3, top_p=0.6, seed=3),
        SamplingParams(temperature=0.9, top_k=40, top_p=0.9, seed=4),
        SamplingParams(temperature=2.0, seed=5),
    ]
    for trial in range(5):
        together = sample_rows(logits, params, [torch.Generator().manual_seed(10 * trial + i) for i in range(6)])
        alone = [sample_rows(logits[i : i + 1], [p], [torch.Generator().manual_seed(10 * trial + i)]) for i, p in enumerate(params)]
        assert together.tolist() == torch.cat(alone).tolist()


# ---------------------------------------------------------------- continuous batching


def mixed_requests(n: int) -> tuple[list[list[int]], list[SamplingParams]]:
    """n prompts of lengths 1 to 30 (some longer than the context), greedy and seeded, short and long."""
    prompts = [tokens(1, 1 + (7 * i) % 30, seed=i)[0].tolist() for i in range(n)]
    params = [
        SamplingParams(max_new_tokens=5 + (11 * i) % 40, temperature=0 if i % 3 == 0 else 0.5 + i / n, seed=i,
                       top_k=None if i % 4 else 10, stop_at_eot=i % 5 != 0, logprobs=3)
        for i in range(n)
    ]
    return prompts, params


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_twenty_four_concurrent_sequences_equal_their_solo_runs(name):
    """Each sequence's tokens are its solo run's, and their log-probabilities (the logits seen
    through log-softmax) agree within 1e-5: batched products are not bitwise single-row ones.
    Sequences join as rows free up (max_batch 8 < 24) and leave at different lengths, some
    stopped by the end-of-text token, several past the context."""
    model = make(FAMILIES[name], wide=True)
    prompts, params = mixed_requests(24)
    eot = common_token(model)
    engine = Engine(model, eot_id=eot, max_batch=8, prefill_chunk=8)
    seqs = [engine.add(Sequence(p, sp)) for p, sp in zip(prompts, params, strict=True)]
    most = 0
    while engine.busy:
        engine.step()
        most = max(most, len(engine.rows))
    assert most == 8 and all(seq.done for seq in seqs)
    for seq, prompt, sp in zip(seqs, prompts, params, strict=True):
        solo = run_alone(model, prompt, sp, eot)
        assert [t.id for t in seq.tokens] == [t.id for t in solo.tokens]
        for ours, theirs in zip(seq.tokens, solo.tokens, strict=True):
            assert math.isclose(ours.logprob, theirs.logprob, rel_tol=1e-5, abs_tol=1e-5)
            assert [i for i, _ in ours.top] == [i for i, _ in theirs.top]
        assert seq.finish_reason == solo.finish_reason
    assert {seq.finish_reason for seq in seqs} == {"stop", "length"}
    assert any(len(p) + len(s.tokens) > BLOCK for p, s in zip(prompts, seqs, strict=True))


def common_token(model: GPT) -> int:
    """The id a model says most often in 60 greedy tokens: as the end-of-text id, some sequences stop at it."""
    return torch.tensor(list(generate_ids(model, [1], max_new_tokens=60, temperature=0))).mode().values.item()


def run_alone(model: GPT, prompt: list[int], params: SamplingParams, eot_id: int = 0) -> Sequence:
    engine = Engine(model, eot_id=eot_id)
    seq = engine.add(Sequence(prompt, params))
    while engine.busy:
        engine.step()
    return seq


def test_sequences_join_and_leave_between_steps():
    model = make(FAMILIES["llama"], wide=True)
    prompts, params = mixed_requests(6)
    engine = Engine(model, eot_id=0, max_batch=4)
    seqs = []
    for prompt, sp in zip(prompts, params, strict=True):  # one more sequence every other step
        seqs.append(engine.add(Sequence(prompt, sp)))
        engine.step()
        engine.step()
    seqs[-1].stop()  # a client leaves: its row is freed before the next step
    engine.step()
    assert seqs[-1].finish_reason == "cancelled" and seqs[-1] not in engine.rows
    while engine.busy:
        engine.step()
    for seq, prompt, sp in zip(seqs[:-1], prompts[:-1], params[:-1], strict=True):
        assert [t.id for t in seq.tokens] == [t.id for t in run_alone(model, prompt, sp).tokens]


def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode():
    model = make(dataclasses.replace(FAMILIES["llama"], block_size=64), wide=True)
    engine = Engine(model, max_batch=2, prefill_chunk=8)
    talker = engine.add(Sequence([1, 2], SamplingParams(max_new_tokens=30, temperature=0)))
    engine.step()
    engine.step()
    reader = engine.add(Sequence(tokens(1, 60)[0].tolist(), SamplingParams(max_new_tokens=3, temperature=0)))
    spoken = []
    while not reader.tokens:
        engine.step()
        spoken.append(len(talker.tokens))
    assert len(spoken) == 8  # 59 prompt tokens in chunks of at most 8 (its last one decodes with the batch)
    assert spoken == list(range(spoken[0], spoken[0] + 8))  # the other row got a token at every one of those steps


def test_the_batched_python_api_equals_single_calls():
    model = make(FAMILIES["gpt2"], wide=True)
    prompts, params = mixed_requests(9)
    batched = generate_batch(model, prompts, params, eot_id=0, max_batch=4)
    assert batched == [list(generate_ids(model, p, sp, eot_id=0)) for p, sp in zip(prompts, params, strict=True)]
    with pytest.raises(TinyGPTError, match="3 prompts but 2"):
        generate_batch(model, prompts[:3], params[:2])


def test_prompt_scores_are_the_models_log_probabilities():
    model = make(FAMILIES["llama"], wide=True)
    prompt = tokens(1, 12)[0].tolist()
    engine = Engine(model, prefill_chunk=5)  # three chunks: scores cross chunk boundaries
    seq = engine.add(Sequence(prompt, SamplingParams(max_new_tokens=0, logprobs=2), score_prompt=True))
    while engine.busy:
        engine.step()
    expected = model(torch.tensor([prompt]))[0][0].log_softmax(-1)  # (T, V)
    assert [t.id for t in seq.prompt_scores] == prompt[1:] and seq.tokens == [] and seq.finish_reason == "length"
    for i, token in enumerate(seq.prompt_scores):
        assert math.isclose(token.logprob, expected[i, prompt[i + 1]].item(), abs_tol=1e-5)
        assert [alt for alt, _ in token.top] == expected[i].topk(2).indices.tolist()
    with pytest.raises(TinyGPTError, match="must fit the context"):
        engine.add(Sequence(list(range(BLOCK + 1)), score_prompt=True))


def test_the_worker_runs_sequences_and_jobs_between_steps():
    model = make(FAMILIES["gpt2"], wide=True)
    worker = Worker(Engine(model, max_batch=4))
    finished = threading.Event()
    seqs = [Sequence([1 + i], SamplingParams(max_new_tokens=20, temperature=0)) for i in range(3)]
    done = []

    def notify(seq):
        if seq.done:
            done.append(seq)
            if len(done) == 3:
                finished.set()

    for seq in seqs:
        worker.submit(seq, notify)
    assert worker.call(lambda: model.cfg.n_layer).result(timeout=30) == 2
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0).result(timeout=30)
    assert finished.wait(30)
    worker.close()
    for i, seq in enumerate(seqs):
        assert [t.id for t in seq.tokens] == list(generate_ids(model, [1 + i], max_new_tokens=20, temperature=0))


# ---------------------------------------------------------------- float16 weights


X86 = pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines, reason="FBGEMM (x86) only")


@X86
@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_packed_weights_decode_close_to_float32_and_leave_the_model_alone(dtype):
    model = make(FAMILIES["llama-gqa-wide-heads"])
    assert decode_dtype(model, "auto") == "float32"  # its weights stay in the caches: packing would not pay
    large = decode_dtype(make(dataclasses.replace(FAMILIES["llama"], vocab_size=32_000, n_embd=128)), "auto")
    assert large == ("int8" if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else "float16")
    prompt = tokens(1, 10)[0].tolist()
    params = SamplingParams(max_new_tokens=6, temperature=0, logprobs=5)
    exact, packed = Engine(model, dtype="float32"), Engine(model, dtype=dtype)
    assert isinstance(packed.model.lm_head, PackedLinear) and isinstance(packed.model.model.layers[0], PackedLlamaBlock)
    kind = Int8Weight if dtype == "int8" else Float16Weight
    assert isinstance(packed.model.lm_head.product, kind) and isinstance(packed.model.model.layers[1].down, kind)
    assert isinstance(model.lm_head, torch.nn.Linear) and exact.model is model  # the model itself is untouched
    assert packed.model.model.embed_tokens.weight is model.model.embed_tokens.weight  # shared, not copied
    ours, theirs = Sequence(prompt, params), Sequence(prompt, params)
    for engine, seq in ((packed, ours), (exact, theirs)):
        engine.add(seq)
        while engine.busy:
            engine.step()
    for a, b in zip(ours.tokens, theirs.tokens, strict=True):
        assert abs(a.logprob - b.logprob) < (1e-2 if dtype == "float16" else 3e-2)
    with pytest.raises(TinyGPTError, match="--dtype"):
        decode_dtype(model, "bfloat16")
    half = make(FAMILIES["llama"]).to(torch.bfloat16)
    assert decode_dtype(half, "auto") == "float32"
    with pytest.raises(TinyGPTError, match=f"--dtype {dtype} packs float32 weights, and this model's are torch.bfloat16"):
        Engine(half, dtype=dtype)


@X86
@pytest.mark.parametrize("shape", [(64, 33), (288, 1), (48, 17), (96, 100)])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_weights_are_the_rounded_weights_times_their_row_scales(shape, bias):
    """Each row is an int8 grid scaled by its largest magnitude / 127, and the product is the
    product with those rounded weights up to bfloat16's rounding of the activations and result."""
    n_in, n_out = shape
    g = torch.Generator().manual_seed(n_in + n_out)
    weight, x = torch.randn(n_out, n_in, generator=g), torch.randn(1, 1, n_in, generator=g)
    b = torch.randn(n_out, generator=g) if bias else None
    packed = Int8Weight(weight, b)
    scales = packed.scales.float().unsqueeze(1)
    assert packed.weight.dtype == torch.int8 and int(packed.weight.abs().max()) == 127  # each row's largest is +-127
    assert (packed.weight.float() * scales - weight).abs().le(scales / 2 + 1e-6).all()  # rounded to the nearest step
    rounded = packed.weight.float() * scales
    expected = x.to(torch.bfloat16).float() @ rounded.t() + (0 if b is None else b)
    y = packed(x)
    assert y.shape == (1, 1, n_out) and y.dtype == torch.float32
    torch.testing.assert_close(y, expected, atol=0.05, rtol=2**-7)
    rows = torch.randn(5, 3, n_in, generator=g)  # more than one row: the float16 copy's numbers exactly
    assert torch.equal(packed(rows), Float16Weight(weight, b)(rows))
    assert not torch.equal(packed(rows[:1, :1]), Float16Weight(weight, b)(rows[:1, :1]))


@X86
def test_int8_falls_back_to_float16_for_widths_its_kernel_cannot_take():
    weight = torch.randn(8, 65)  # torch._weight_int8pack_mm gives garbage for 65 inputs: it must never see it
    with pytest.raises(ValueError, match="divisible by 16"):
        Int8Weight(weight)
    assert isinstance(pack_weight(weight, None, "int8"), Float16Weight)
    assert isinstance(pack_weight(torch.randn(8, 64), None, "int8"), Int8Weight)
    x = torch.randn(2, 65)
    torch.testing.assert_close(pack_weight(weight, None, "int8")(x), x @ weight.t(), atol=1e-2, rtol=1e-2)


@X86
def test_packing_leaves_large_weights_alone_and_int8_takes_them():
    """FBGEMM's float16 prepack saturates the float32 weight it gets in place: packing must work on a copy,
    and int8, whose scales take any magnitude, must not be refused for the float16 copy's saturation."""
    weight = torch.randn(4, 32, generator=torch.Generator().manual_seed(0)) * 1e6
    kept = weight.clone()
    Float16Weight(weight)
    assert torch.equal(weight, kept)
    packed = pack_weight(weight, None, "int8")
    assert isinstance(packed, Int8Weight) and torch.equal(weight, kept)
    x = torch.randn(1, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(packed(x), x @ weight.t(), rtol=2e-2, atol=0)
    assert packed(torch.randn(0, 32)).shape == (0, 4) and packed(torch.randn(2, 0, 32)).shape == (2, 0, 4)


@X86
@pytest.mark.parametrize("dtype", ["float16", "int8"])
@pytest.mark.parametrize("options", [{}, {"qk_norm": True, "activation": "relu2", "n_kv_head": 2}])
def test_packed_llama_block_gives_the_block_with_packed_linear_layers_bit_for_bit(options, dtype):
    model = make(dataclasses.replace(FAMILIES["llama"], **options), wide=True)
    fused = decoding_model(model, dtype)
    plain = copy.deepcopy(model)  # every linear layer packed, the blocks as they are
    for layer in plain.model.layers:  # q, k and v: one product, as the model makes them
        layer.self_attn.__dict__["qkv"] = PackedLinear(layer.self_attn.qkv_weight(), None, dtype)
    for module in list(plain.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, PackedLinear(child.weight, child.bias, dtype))
    assert all(isinstance(block, PackedLlamaBlock) for block in fused.model.layers)
    idx = tokens(2, 7)
    with torch.inference_mode():
        assert torch.equal(fused.hidden_states(idx), plain.hidden_states(idx))  # no cache (evaluation)
        last = []
        for m in (fused, plain):  # a prefill of 6 through a KV cache, then one decoding step
            cache = KVCache(m, 2)
            m.hidden_states(idx[:, :6], cache.batch(0, 2, 6))
            cache.lengths[:] = [6, 6]
            last.append(m.hidden_states(idx[:, 6:], cache.batch(0, 2, 1)))
        assert torch.equal(*last)
