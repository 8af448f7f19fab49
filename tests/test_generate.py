"""Generation with a per-token early exit: the library's own greedy search, a plain reference.

Every invariant is checked against an independent path: ``model.generate(do_sample=False)``
(policy ``never``), a slow reference written out below (the model's own decoder layers called
one by one, token by token, each skipped layer *run* on the exit layer's hidden state so that
it writes to the cache the K/V it computes from it), or the same prompts one at a time.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_EXTRA, TINY_SPECS, tiny
from test_engine import LLAMA_LIKE
from torch.utils.flop_counter import FlopCounterMode
from transformers import DynamicCache

from adainfer.decide.costs import ModelDims, classifier_flops, generation_costs
from adainfer.decide.policies import (
    CRFPolicy,
    GapThreshold,
    NeverExit,
    OracleConsistent,
    OracleGold,
)
from adainfer.decide.records import LayerRecords
from adainfer.engine import EarlyExitEngine, FixedExit, generate
from adainfer.engine.inputs import layer_types, rope_at
from adainfer.engine.kv import project_kv
from adainfer.errors import AdaInferError
from adainfer.llm import supported_model_types
from adainfer.llm.lenses import TunedLens

PROMPTS = ["Q: Monday\nA: Tuesday\n\nQ: March\nA:", "Q: b\nA:", "Q: seven\nA: eight\n\nQ: one\nA:"]
SLIDING = dict(
    num_key_value_heads=1,
    head_dim=16,
    sliding_window=4,  # shorter than the prompts: the window really slides
    layer_types=["sliding_attention", "full_attention"] * 2,
)
MODELS = {**TINY_SPECS, "gemma3 sliding": lambda: tiny("gemma3_text", **SLIDING)}
_LOADED: dict[str, object] = {}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    if request.param not in _LOADED:
        _LOADED[request.param] = MODELS[request.param]().load()
    loaded = _LOADED[request.param]
    assert loaded.num_layers == 4
    if request.param == "gemma3 sliding":
        assert loaded.config.sliding_window == 4
    return loaded


def _ids(loaded, texts=PROMPTS) -> list[list[int]]:
    return [loaded.tokenizer(t).input_ids for t in texts]


def _eos(loaded) -> set[int]:
    eos = loaded.model.generation_config.eos_token_id
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


def hf_greedy(loaded, texts, max_new: int, eos: bool = False, **kwargs) -> list[list[int]]:
    """``model.generate(do_sample=False)`` on a left-padded batch: the new tokens of each row,
    up to its first end-of-sequence token (included) when ``eos``."""
    tok = loaded.tokenizer
    tok.padding_side = "left"
    try:
        enc = tok(texts, padding=True, return_tensors="pt")
    finally:
        tok.padding_side = "right"
    if len(texts) > 1:
        assert (enc.attention_mask == 0).any(), "the batch must be padded"
    extra = {} if eos else {"eos_token_id": None}
    with torch.no_grad():
        out = loaded.model.generate(
            **enc,
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            **extra,
            **kwargs,
        )
    rows = out[:, enc.input_ids.shape[1] :].tolist()
    ends = _eos(loaded) if eos else set()
    cut = [next((i + 1 for i, t in enumerate(row) if t in ends), len(row)) for row in rows]
    return [row[:n] for row, n in zip(rows, cut, strict=True)]


def reference(
    loaded, ids: list[int], max_new: int, decide, lens: TunedLens | None = None
) -> tuple[list[int], list[int]]:
    """Greedy tokens and exit layers of one prompt, written plainly: a full-depth prefill,
    then each token through the decoder layers one by one; after layer j < L,
    ``decide(j, logits)`` (the logit lens) says whether it exits; every later layer is run on
    the exit hidden state, its output thrown away: what it writes to the cache is the K/V it
    computes from that state. ``lens``: a tuned lens's translator before the norm and head."""
    model, parts, L = loaded.model, loaded.parts, loaded.num_layers
    config = model.config
    opt = config.model_type == "opt"
    kinds = getattr(config, "layer_types", None) or ["full_attention"] * L
    cache = DynamicCache(config=config)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True).logits[0, -1]
        tokens, exits = [int(logits.argmax())], [L]
        for step in range(max_new - 1):
            pos = torch.tensor([[len(ids) + step]])
            token = torch.tensor([[tokens[-1]]])
            if opt:
                decoder = model.model.decoder
                mask = torch.ones(1, len(ids) + step + 1, dtype=torch.long)
                h = decoder.embed_tokens(token) + decoder.embed_positions(mask, 0, pos)
            else:
                h = model.get_input_embeddings()(token)
            exit_state = None
            for j, layer in enumerate(parts.layers):
                kwargs = {"position_ids": pos, "cache": cache, "attention_mask": None}
                if config.model_type == "gemma3_text":
                    kwargs["position_embeddings"] = model.model.rotary_emb(h, pos, kinds[j])
                elif not opt:
                    kwargs["position_embeddings"] = model.model.rotary_emb(h, pos)
                if exit_state is not None:
                    layer(exit_state, **kwargs)  # writes K/V from the exit state; output unused
                    continue
                h = layer(h, **kwargs)
                read = h[0, -1] if lens is None else h[0, -1] @ lens.weight[j] + lens.bias[j]
                logits = parts.probe_logits(read if j + 1 < L else h[0, -1]).float()
                if j + 1 == L or decide(j + 1, logits):
                    exit_state = h
                    tokens.append(int(logits.argmax()))
                    exits.append(j + 1)
    return tokens, exits


def gap_of(logits: torch.Tensor) -> float:
    top = logits.softmax(-1).topk(2).values
    return float(top[0] - top[1])


def mid_gap(loaded, prompts, max_new: int, lens: TunedLens | None = None) -> float:
    """A gap threshold at which this model's tokens exit at several depths, by the reference:
    the first quantile of the gaps along the full-depth greedy path (median first) whose
    early-exit tokens exit at more than one layer."""
    gaps = []

    def record(j, logits):
        gaps.append(gap_of(logits))
        return False

    for ids in prompts:
        reference(loaded, ids, max_new, record, lens)
    for q in (0.5, 0.7, 0.3, 0.8, 0.2, 0.9, 0.1, 0.95, 0.05):
        threshold = float(np.quantile(gaps, q))
        exits = set()
        for ids in prompts:
            _, layers = reference(
                loaded, ids, max_new, lambda j, x, t=threshold: gap_of(x) > t, lens
            )
            exits |= set(layers[1:])
        if len(exits) > 1:
            return threshold
    raise AssertionError(f"no gap threshold gives exits at several depths: gaps {gaps}")


def random_lens(loaded) -> TunedLens:
    """Translators near the identity but not it: a probe that reads otherwise than the logit
    lens, so a generation that ignored it would exit elsewhere."""
    g = torch.Generator().manual_seed(0)
    L, h = loaded.num_layers, loaded.hidden_size
    weight = torch.eye(h) + 0.5 * torch.randn(L, h, h, generator=g) / h**0.5
    return TunedLens(weight, 0.1 * torch.randn(L, h, generator=g))


# -- the library's own greedy search ------------------------------------------------------------
@pytest.mark.parametrize("batch", ["one at a time", "padded batch"])
def test_never_equals_model_generate(model, batch):
    ids = _ids(model)
    engine = EarlyExitEngine(model, NeverExit())
    if batch == "padded batch":
        got = generate(engine, ids, 10, batch_size=len(ids), eos_token_id=())
        expected = hf_greedy(model, PROMPTS, 10)
    else:
        got = generate(engine, ids, 10, batch_size=1, eos_token_id=())
        expected = [hf_greedy(model, [text], 10)[0] for text in PROMPTS]
    assert got.tokens == expected
    assert got.finish == ["length"] * len(ids)
    for work, prompt in zip(got.work, ids, strict=True):
        assert work.exit_layer.tolist() == [model.num_layers] * 10
        assert work.probes.tolist() == [1] * 10 and work.kv_fills.tolist() == [0] * 10
        assert work.context.tolist() == list(range(len(prompt), len(prompt) + 10))


def test_project_kv_equals_what_each_layer_caches(model):
    """The K/V a skipped layer gets is what the layer itself caches from the same input."""
    ids = torch.tensor([_ids(model)[0]])
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = model.model(ids, cache=cache, use_cache=True, output_hidden_states=True)
        positions = torch.arange(ids.shape[1])[None]
        for j, layer in enumerate(model.parts.layers):
            rope = rope_at(model.model, layer_types(model.model)[j], positions)
            key, value = project_kv(layer, out.hidden_states[j], rope)
            stored = cache.layers[j].keys.shape[-2]  # a sliding layer keeps its window only
            if getattr(model.config, "sliding_window", None) == 4 and j % 2 == 0:
                assert stored == 3 < ids.shape[1]
            torch.testing.assert_close(key[:, :, -stored:], cache.layers[j].keys)
            torch.testing.assert_close(value[:, :, -stored:], cache.layers[j].values)


# -- skipped layers' cache: a plain reference ---------------------------------------------------
@pytest.mark.parametrize("kv_fill", ["propagate", "recompute"])
@pytest.mark.parametrize("kind", ["fixed 2", "gap", "gap, tuned lens"])
def test_early_exit_equals_the_plain_reference(model, kind, kv_fill):
    """Tokens and exit layers equal the reference's, one prompt at a time: a fixed exit at
    layer 2, and a gap threshold at which tokens exit at several depths, so later tokens do
    read the entries filled for the layers earlier tokens skipped (read through the logit
    lens, or a tuned lens whose translators are not the identity). ``recompute`` computes the
    same entries later, so it gives the same result, with fewer fills."""
    ids, max_new, L = _ids(model), 8, model.num_layers
    lens = random_lens(model) if kind.endswith("tuned lens") else None
    if kind.startswith("gap"):
        threshold = mid_gap(model, ids, max_new, lens)
        policy = GapThreshold(threshold=threshold)

        def decide(j, logits):
            return gap_of(logits) > threshold
    else:
        policy = FixedExit(2)

        def decide(j, logits):
            return j == 2

    engine = EarlyExitEngine(model, policy, lens)
    got = generate(engine, ids, max_new, batch_size=1, kv_fill=kv_fill, eos_token_id=())
    propagated = generate(engine, ids, max_new, batch_size=1, eos_token_id=())
    exits = []
    for i, prompt in enumerate(ids):
        tokens, layers = reference(model, prompt, max_new, decide, lens)
        assert got.tokens[i] == tokens
        assert got.work[i].exit_layer.tolist() == layers
        exits += layers[1:]
    if kind != "fixed 2":  # exits at several depths, some early, some at the last layer
        assert len(set(exits)) > 1 and min(exits) < L
        assert any(w.classified.sum() > 0 for w in got.work)
    fills = sum(int(w.kv_fills.sum()) for w in got.work)
    full_fills = sum(int((L - w.exit_layer).sum()) for w in got.work)
    assert sum(int(w.kv_fills.sum()) for w in propagated.work) == full_fills > 0
    if kv_fill == "recompute":
        assert fills < full_fills  # e.g. a fixed exit at 2 never reaches layers 3..L again
        if kind == "fixed 2":
            assert fills == 0


@pytest.mark.parametrize("policy", ["fixed L", "gap that never stops"])
def test_recompute_at_full_depth_equals_never(model, policy):
    """Nothing is skipped, so nothing is pending: the tokens of ``never``, and no fill."""
    ids = _ids(model)
    L = model.num_layers
    chosen = FixedExit(L) if policy == "fixed L" else GapThreshold(threshold=2.0)
    never = generate(EarlyExitEngine(model, NeverExit()), ids, 8, batch_size=3, eos_token_id=())
    got = generate(
        EarlyExitEngine(model, chosen), ids, 8, batch_size=3, kv_fill="recompute", eos_token_id=()
    )
    assert got.tokens == never.tokens
    assert all(w.kv_fills.sum() == 0 and (w.exit_layer == L).all() for w in got.work)
    if policy != "fixed L":  # it probes every layer, for nothing
        assert all((w.probes[1:] == L).all() for w in got.work)


# -- batching -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kv_fill", ["propagate", "recompute"])
def test_rows_finishing_at_different_steps_give_the_batch_size_one_results(model, kv_fill):
    """Rows end at different steps (a stop string each, taken from their own text) and leave
    the batch and its cache; tokens exit at several depths. Every result equals the prompt's
    run alone, its work too, and the work per token adds up to each step's log."""
    ids, max_new = _ids(model), 8
    policy = GapThreshold(threshold=mid_gap(model, ids, max_new))
    engine = EarlyExitEngine(model, policy)
    free = generate(engine, ids, max_new, batch_size=1, kv_fill=kv_fill, eos_token_id=())
    # The text of row r's token r + 2: a stop string that ends row r by its step r + 3.
    decode = model.tokenizer.decode
    stop = sorted({decode([free.tokens[r][r + 2]]) for r in range(len(ids))} - {""})
    single = generate(engine, ids, max_new, stop, kv_fill, batch_size=1, eos_token_id=())
    batched = generate(engine, ids, max_new, stop, kv_fill, batch_size=len(ids), eos_token_id=())
    lengths = [len(t) for t in single.tokens]
    assert len(set(lengths)) > 1 and "stop" in single.finish, (lengths, single.finish)
    assert batched.tokens == single.tokens and batched.finish == single.finish
    assert batched.text == single.text
    for text, tokens, finish in zip(batched.text, batched.tokens, batched.finish, strict=True):
        full = decode(tokens)  # the stop string's token is kept; the text ends before it
        assert full.startswith(text) and not any(s in text for s in stop)
        assert (finish == "stop") == any(s in full for s in stop)
    for a, b in zip(batched.work, single.work, strict=True):
        for name in ("exit_layer", "probes", "classified", "kv_fills", "context"):
            assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
    exits = np.concatenate([w.exit_layer[1:] for w in batched.work])
    assert len(set(exits.tolist())) > 1
    widths = [w.rows[0] for w in batched.steps]
    assert widths == sorted(widths, reverse=True) and widths[-1] < len(ids), "rows must leave"
    # Per-token counts add up to the steps' layer-by-layer logs.
    assert exits.sum() == sum(sum(w.rows) for w in batched.steps)
    probes = sum(int(w.probes[1:].sum()) for w in batched.work)
    assert probes == sum(sum(w.probed) for w in batched.steps)
    scored = sum(int(w.classified[1:].sum()) for w in batched.work)
    assert scored == sum(sum(w.classified) for w in batched.steps) > 0


def test_a_state_head_decides_each_token_without_probes(tiny_llama):
    """A policy on hidden states (``state``, fitted as in test_engine) scores each running
    row at the layers it is asked at and probes only the exit, for the token; batched and
    alone agree."""
    from test_engine import fitted

    policy = fitted("state", tiny_llama)
    engine = EarlyExitEngine(tiny_llama, policy)
    ids = _ids(tiny_llama)
    batched = generate(engine, ids, 8, batch_size=len(ids), eos_token_id=())
    single = generate(engine, ids, 8, batch_size=1, eos_token_id=())
    assert batched.tokens == single.tokens
    asked = np.cumsum(policy.schedule_mask(tiny_llama.num_layers))
    exits = np.concatenate([w.exit_layer[1:] for w in batched.work])
    assert len(set(exits.tolist())) > 1, exits
    for work, alone in zip(batched.work, single.work, strict=True):
        assert work.exit_layer.tolist() == alone.exit_layer.tolist()
        assert (work.probes == 1).all()
        assert work.classified[1:].tolist() == asked[work.exit_layer[1:] - 1].tolist()


# -- what a token costs -------------------------------------------------------------------------
def _uncounted(generation, dims: ModelDims, policy, vocab: int) -> float:
    """What the cost model charges that no matmul computes: attention scores (on the CPU the
    fused SDPA kernel is not counted by FlopCounterMode), softmax/top-2/argmax and the policy's
    decisions; written from each token's work."""
    L, per_score = dims.num_layers, classifier_flops(policy, dims)
    out = 0.0
    for work, prompt in zip(generation.work, generation.prompt_len, strict=True):
        out += vocab + L * (dims.layer(int(prompt)) - dims.layer(int(prompt), 0))  # prefill
        for t in range(1, len(work.exit_layer)):
            exit_at, context = int(work.exit_layer[t]), int(work.context[t])
            below = int(work.probes[t]) - (exit_at == L)
            out += 6 * vocab * below + vocab * (exit_at == L) + per_score * work.classified[t]
            out += exit_at * (dims.layer(1, context) - dims.layer(1, 0))
    return out


@pytest.mark.parametrize("kind", ["never", "fixed 2", "fixed 1", "gap", "gap, tuned lens"])
@pytest.mark.parametrize("kv_fill", ["propagate", "recompute"])
@pytest.mark.parametrize("model_type", sorted(TINY_SPECS))
def test_the_honest_flops_per_token_are_the_matmuls_run(model_type, kv_fill, kind):
    """``generation_costs`` prices each token from its work log; PyTorch's FLOP counter counts
    the matrix products generation really ran (layers, probes, a tuned lens's translators, the
    K/V fills of skipped layers, the heads). They agree once the terms no matmul computes are
    set aside. A small vocabulary, so the layers and fills weigh as much as the head."""
    loaded = tiny(model_type, vocab_size=256, **TINY_EXTRA[model_type]).load()
    loaded.model.requires_grad_(False)  # the counter's module tracker wants no grad leaves
    rng = np.random.default_rng(0)
    ids = [rng.integers(3, 256, n).tolist() for n in (5, 9, 14)]
    lens = random_lens(loaded) if kind.endswith("tuned lens") else None
    if kind == "never":
        policy = NeverExit()
    elif kind.startswith("fixed"):
        policy = FixedExit(int(kind[-1]))
    else:
        policy = GapThreshold(threshold=mid_gap(loaded, ids, 8, lens))
    with FlopCounterMode(display=False) as counter:
        got = generate(EarlyExitEngine(loaded, policy, lens), ids, 8, (), kv_fill, 1, ())
    counted = sum(
        flops
        for op, flops in counter.get_flop_counts()["Global"].items()
        if "attention" not in str(op)
    )
    cost = generation_costs(got, loaded.config, policy, lens)
    dims = ModelDims.from_config(loaded.config)
    priced = cost.engine_flops + cost.prefill_flops - _uncounted(got, dims, policy, 256)
    # a tuned lens's bias add (h per read) is priced, and is no matmul
    assert counted == pytest.approx(priced, rel=1e-3 if lens is not None else 1e-9)
    exits = np.concatenate([w.exit_layer[1:] for w in got.work])
    assert cost.tokens == exits.size == 3 * 7
    if kind == "never":
        assert cost.flops_ratio == cost.flops_ratio_with_prefill == 1.0
    elif kind.startswith("fixed"):
        assert cost.flops_ratio < cost.flops_ratio_with_prefill < 1.0
    else:
        assert len(set(exits.tolist())) > 1


# -- bad input ----------------------------------------------------------------------------------
def _records(num_layers: int, n: int = 12) -> LayerRecords:
    rng = np.random.default_rng(0)
    values = {k: rng.random((n, num_layers)).astype(np.float32) for k in ("gap", "top_prob")}
    argmax = rng.integers(0, 3, (n, num_layers))
    return LayerRecords(values, argmax, argmax[:, -1].copy(), np.full(n, 10))


@pytest.fixture
def untouched(tiny_llama):
    """Counts calls of the model's embeddings: a refusal must come before any forward."""
    calls = []
    handle = tiny_llama.model.get_input_embeddings().register_forward_hook(
        lambda *args: calls.append(1)
    )
    yield tiny_llama
    handle.remove()
    assert calls == [], "the model ran before the refusal"


@pytest.mark.parametrize("policy", [CRFPolicy(), OracleGold(), OracleConsistent()])
def test_policies_that_cannot_run_online_are_refused(untouched, policy):
    policy.fit(_records(untouched.num_layers))
    with pytest.raises(AdaInferError, match=f"(?s){policy.name}.*cannot run"):
        generate(EarlyExitEngine(untouched, policy), _ids(untouched), 4)


@pytest.mark.parametrize("max_new", [0, -3, 2.5])
def test_nothing_to_generate_is_refused(untouched, max_new):
    with pytest.raises(AdaInferError, match=f"(?s)max_new_tokens={max_new}.*>= 1"):
        generate(EarlyExitEngine(untouched, NeverExit()), _ids(untouched), max_new)


def test_a_prompt_that_leaves_no_room_is_refused(untouched):
    engine = EarlyExitEngine(untouched, NeverExit())
    context = untouched.max_length
    full = [[5] * 3, [7] * context]
    with pytest.raises(AdaInferError, match=f"(?s)prompt 1 is {context} tokens.*at most 0 new"):
        generate(engine, full, 1)
    nearly = [[7] * (context - 2)]
    with pytest.raises(AdaInferError, match=f"(?s)needs {context + 1} positions.*at most 2 new"):
        generate(engine, nearly, 3)


def test_bad_generation_settings_are_refused(untouched):
    engine = EarlyExitEngine(untouched, NeverExit())
    ids = _ids(untouched)
    with pytest.raises(AdaInferError, match="(?s)kv_fill='copy'.*propagate"):
        generate(engine, ids, 4, kv_fill="copy")
    with pytest.raises(AdaInferError, match="stop strings"):
        generate(engine, ids, 4, stop="\n")
    with pytest.raises(AdaInferError, match="stop strings"):
        generate(engine, ids, 4, stop=["\n", ""])
    with pytest.raises(AdaInferError, match="batch is empty"):
        generate(engine, [], 4)


# -- the real models -----------------------------------------------------------------------------
def _gemma3():
    from conftest import compose_cfg
    from hydra.utils import instantiate

    loaded = instantiate(compose_cfg(["model=gemma3_270m"]).model).load()
    assert loaded.num_layers == 18 and loaded.config.model_type == "gemma3_text"
    assert {"sliding_attention", "full_attention"} <= set(loaded.config.layer_types)
    return loaded


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_real_model_never_equals_model_generate(name, request):
    """The embedded SmolLM2-135M and Gemma-3-270M (sliding and full layers, two rotary bases):
    with its own end-of-sequence tokens, one prompt at a time and in a padded batch; and with
    the stop string "\\n" against ``generate(stop_strings=...)`` (which pads a finished row
    with padding, so the rows are compared up to our stop)."""
    loaded = request.getfixturevalue("smollm2_model") if name == "smollm2" else _gemma3()
    ids, max_new = _ids(loaded), 8
    engine = EarlyExitEngine(loaded, NeverExit())
    padded = generate(engine, ids, max_new, batch_size=len(ids))
    assert padded.tokens == hf_greedy(loaded, PROMPTS, max_new, eos=True)
    alone = generate(engine, ids, max_new, batch_size=1)
    assert alone.tokens == [hf_greedy(loaded, [text], max_new, eos=True)[0] for text in PROMPTS]
    stopped = generate(engine, ids, max_new, ["\n"], batch_size=len(ids))
    assert "stop" in stopped.finish
    theirs = hf_greedy(
        loaded, PROMPTS, max_new, eos=True, stop_strings=["\n"], tokenizer=loaded.tokenizer
    )
    padding = _eos(loaded) | {loaded.tokenizer.pad_token_id}
    for ours, row, text in zip(stopped.tokens, theirs, stopped.text, strict=True):
        assert row[: len(ours)] == ours and set(row[len(ours) :]) <= padding
        assert "\n" not in text


# Every other model type adainfer probes: test_engine's (a window shorter than the prompts
# where the type has one) less Gemma-3, tested above, plus three the engine tests do not build.
OTHER_TYPES = {k: v for k, v in LLAMA_LIKE.items() if k != "gemma3_text"} | {
    "gemma": dict(num_key_value_heads=1, head_dim=16),
    "gemma2": dict(num_key_value_heads=1, head_dim=16, sliding_window=4),
    "phi3": dict(num_key_value_heads=2, sliding_window=4),
}


@pytest.mark.parametrize("model_type", sorted(OTHER_TYPES))
def test_every_other_model_type_generates_as_model_generate(model_type):
    """With ``never``, padded; and a fixed exit equals the plain reference (Phi-3, whose K/V
    projection is fused, is refused before it runs)."""
    assert set(OTHER_TYPES) | set(TINY_SPECS) | {"llama"} >= set(supported_model_types())
    loaded = tiny(model_type, **OTHER_TYPES[model_type]).load()
    assert loaded.num_layers == 4 and loaded.config.model_type == model_type
    ids = _ids(loaded)
    never = generate(EarlyExitEngine(loaded, NeverExit()), ids, 6, batch_size=3, eos_token_id=())
    assert never.tokens == hf_greedy(loaded, PROMPTS, 6)
    engine = EarlyExitEngine(loaded, FixedExit(2))
    if model_type == "phi3":
        with pytest.raises(AdaInferError, match="fused projection"):
            generate(engine, ids, 6, eos_token_id=())
        return
    got = generate(engine, ids, 6, batch_size=3, eos_token_id=())
    for i, prompt in enumerate(ids):
        assert got.tokens[i] == reference(loaded, prompt, 6, lambda j, x: j == 2)[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_real_model_early_exit_equals_the_plain_reference(name, request):
    """The embedded models under a fixed exit at 2/3 depth and (SmolLM2) a gap threshold
    with exits at several depths: tokens and exit layers equal the plain reference's, under
    both ways of filling the skipped layers' cache."""
    loaded = request.getfixturevalue("smollm2_model") if name == "smollm2" else _gemma3()
    L, max_new = loaded.num_layers, 6
    ids = _ids(loaded, PROMPTS[:1])
    k = 2 * L // 3
    cases = [(FixedExit(k), lambda j, x: j == k)]
    if name == "smollm2":
        threshold = mid_gap(loaded, ids, max_new)
        cases.append((GapThreshold(threshold=threshold), lambda j, x: gap_of(x) > threshold))
    for policy, decide in cases:
        tokens, layers = reference(loaded, ids[0], max_new, decide)
        for kv_fill in ("propagate", "recompute"):
            got = generate(EarlyExitEngine(loaded, policy), ids, max_new, kv_fill=kv_fill)
            n = len(got.tokens[0])  # it may end early, at an end-of-sequence token
            assert got.tokens[0] == tokens[:n] and got.work[0].exit_layer.tolist() == layers[:n]
            assert n == max_new or got.finish[0] == "eos"
        if policy.name == "gap":
            assert len(set(layers[1:])) > 1
