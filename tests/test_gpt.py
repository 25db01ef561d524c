"""GPT: the model contract, KV-cached generation against full recomputation, every decoding strategy, and errors.

Most tests use `trained`: the debug model after 40 AdamW steps on a random Markov chain over 16 tokens, so that its
next-token distributions are peaked and position-dependent (a freshly initialised GPT mostly repeats its input), and
pinned argmaxes have margins far above float rounding.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from genforge.data.tokenizers import CharTokenizer
from genforge.errors import UserError
from genforge.models._protocol import GenerativeModel
from genforge.models.decoding import (apply_repetition_penalty, keep_min_p, keep_top_k, keep_top_p,
                                      repeated_ngram_tokens)
from genforge.models.gpt import GPT, GPTConfig, KVCache, SlidingContext, padding_mask

V = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny matmuls: thread hand-offs cost more than they save, and the CI machine is shared
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def debug_model(vocab_size: int = V, **overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_dict({"family": "gpt", "preset": "debug", "vocab_size": vocab_size, **overrides}))


@pytest.fixture(scope="module")
def trained(one_thread) -> GPT:
    model = debug_model()
    transitions = (torch.randn(V, V) * 2).softmax(dim=-1)  # the "language": a random Markov chain
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        seq = torch.empty(16, 33, dtype=torch.long)
        seq[:, 0] = torch.randint(V, (16,))
        for t in range(32):
            seq[:, t + 1] = torch.multinomial(transitions[seq[:, t]], 1).squeeze(1)
        loss = model.loss({"x": seq[:, :-1], "y": seq[:, 1:]}, "model")["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


class FixedLogits:
    """Replace the model's output with one fixed next-token logit vector, to test decoding rules exactly."""

    def __init__(self, model: GPT, logits: list[float]):
        self.logits = torch.tensor(logits)
        self.handle = model.lm_head.register_forward_hook(lambda mod, args, out: self.logits.expand_as(out).clone())

    def __enter__(self) -> FixedLogits:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# --------------------------------------------------------------------------------------------------------------
# Model


def test_contract_presets_and_init():
    model = debug_model(65)
    assert isinstance(model, GenerativeModel) and model.output_kind == "text"
    assert set(GPTConfig.PRESETS) >= {"debug", "baby", "char"}
    assert model.lm_head.weight is model.transformer.wte.weight  # weight tying
    # GPT-2 init: residual projections get std 0.02 / sqrt(2 * n_layer)
    proj = model.transformer.h[0].attn.c_proj.weight
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.1)
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.1)
    # the loss of an untrained model is that of a uniform guess, ln(vocab)
    x, y = torch.randint(65, (8, 32)), torch.randint(65, (8, 32))
    loss = model.loss({"x": x, "y": y}, "model")["loss"]
    assert loss.item() == pytest.approx(math.log(65), abs=0.05)


def test_config_errors():
    with pytest.raises(ValueError, match="divisible by `model.n_head`"):
        GPTConfig.from_dict({"family": "gpt", "n_head": 3, "n_embd": 32, "vocab_size": 8})
    with pytest.raises(UserError, match="model.vocab_size"):
        GPT(GPTConfig.from_dict({"family": "gpt", "preset": "debug"}))


def test_optimizer_groups_and_counts():
    model = debug_model()
    groups = model.optimizer_param_groups(list(model.parameters()), 0.1)
    decay, no_decay = groups[0]["params"], groups[1]["params"]
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay) and all(p.dim() < 2 for p in no_decay)
    assert len(decay) + len(no_decay) == len(model.param_groups()["model"]) == len(list(model.parameters()))
    # debug: 16*32 tied embedding/head + per block (4*32*32 attn + 8*32*32 mlp + 2 LayerNorm gains) + final gain
    assert model.num_params() == 16 * 32 + 2 * (12 * 32 * 32 + 2 * 32) + 32 == 25248
    assert model.num_params(non_embedding=False) == 25248 + 32 * 32
    assert model.flops_per_token() == 6 * 25248 + 12 * 2 * 32 * 32


def test_loss_ignores_padded_targets():
    model = debug_model()
    x, y = torch.randint(V, (2, 8)), torch.randint(V, (2, 8))
    padded = y.clone()
    padded[:, 4:] = -100
    logits = model(x)
    expected = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, V), y[:, :4].reshape(-1))
    assert model.loss({"x": x, "y": padded}, "model")["loss"].item() == pytest.approx(expected.item(), abs=1e-6)


# --------------------------------------------------------------------------------------------------------------
# KV cache and padding


def test_kv_cache_matches_full_recompute(trained):
    seq = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    cache = KVCache(trained.config.n_layer, max_len=12)
    with torch.no_grad():
        logits = trained(seq, cache=cache, last_only=True)[:, -1]
        for _ in range(6):
            full = trained(seq)[:, -1]  # no cache: the whole sequence again
            torch.testing.assert_close(logits, full, atol=1e-5, rtol=0)
            token = logits.argmax(dim=-1, keepdim=True)
            seq = torch.cat([seq, token], dim=1)
            logits = trained(token, cache=cache, last_only=True)[:, -1]


def test_padding_mask_lets_pads_attend_only_to_themselves():
    real = torch.tensor([[False, True, True]])
    mask = padding_mask(real, 3)[0, 0]
    assert mask.tolist() == [[True, False, False], [False, True, False], [False, True, True]]


def test_left_padded_batch_equals_each_prompt_alone(trained):
    prompts = [[1, 2, 3, 4, 5], [7], [8, 9]]
    batch = trained.generate(prompts, max_new_tokens=8, temperature=0)
    alone = [trained.generate([p], max_new_tokens=8, temperature=0)[0] for p in prompts]
    assert batch == alone
    beams = trained.generate(prompts, max_new_tokens=6, num_beams=3)
    assert beams == [trained.generate([p], max_new_tokens=6, num_beams=3)[0] for p in prompts]


# --------------------------------------------------------------------------------------------------------------
# Generating past block_size: the sliding window


def windowed_reference(model: GPT, prompts: list[list[int]], n_new: int, keep: int):
    """Greedy decoding without a cache, each row's context recomputed from scratch every step, under the window
    policy: contexts grow by one token per step; when the longest has block_size tokens and one more must be fed,
    every row restarts from its last `keep` tokens (the new one included). Returns the new tokens, the logits of
    every step (n_new, B, V) and how often the window slid."""
    block_size = model.config.block_size
    sequences = [list(p) for p in prompts]
    lengths = [len(p) for p in prompts]  # each row's context: its last `length` tokens
    steps, slides = [], 0
    with torch.no_grad():
        for step in range(n_new):
            if step > 0:
                if max(lengths) == block_size:
                    lengths = [min(keep, len(seq)) for seq in sequences]
                    slides += 1
                else:
                    lengths = [n + 1 for n in lengths]
            logits = torch.stack([model(torch.tensor([seq[-n:]]))[0, -1] for seq, n in zip(sequences, lengths)])
            steps.append(logits)
            for seq, token in zip(sequences, logits.argmax(dim=-1).tolist()):
                seq.append(token)
    return [seq[len(p):] for seq, p in zip(sequences, prompts)], torch.stack(steps), slides


@pytest.mark.parametrize("prompts, keep", [
    ([[1, 2, 3, 4, 5]], 16),  # the default window_keep, block_size // 2
    ([[1, 2, 3, 4, 5]], 32),  # window_keep = block_size: nanoGPT's crop, a rebuild every token
    ([[1, 2, 3, 4, 5]], 1),
    ([[1, 2, 3, 4, 5], [7], [8, 9]], 16),  # left-padded rows slide together
    ([list(range(V)) * 2], 16),  # a prompt that fills the whole context slides at the first fed token
])
def test_window_matches_a_no_cache_reference(trained, prompts, keep):
    n_new = 75  # crosses the window boundary several times (block_size 32)
    expected, expected_logits, slides = windowed_reference(trained, prompts, n_new, keep)
    # step by step, the cached context gives the reference's logits
    context = SlidingContext(trained, keep, extra=n_new - 1)
    with torch.no_grad():
        logits = context.start(prompts)
        sequences = [list(p) for p in prompts]
        for step in range(n_new):
            torch.testing.assert_close(logits, expected_logits[step], atol=1e-5, rtol=0)
            token = expected_logits[step].argmax(dim=-1)
            for seq, t in zip(sequences, token.tolist()):
                seq.append(t)
            if step < n_new - 1:
                logits = context.step(token, sequences)
    assert context.rebuilds == slides > 0
    # and generate() decodes the same tokens
    assert trained.generate(prompts, max_new_tokens=n_new, temperature=0, window_keep=keep) == expected


def run_rows(rows, arrivals: dict[int, list[list[int]]], drops: dict[int, list[int]] | None = None):
    """Drive `rows` step by step: at step s, the prompts arrivals[s] join and the rows drops[s] (their order of
    arrival) leave. Returns each row's tokens, by order of arrival, and the cache length after every step."""
    order: dict[int, int] = {}  # handle -> order of arrival
    tokens: list[list[int]] = []
    lengths = []
    step = 0
    while rows or any(s >= step for s in arrivals):
        for prompt_rows in ([arrivals[step]] if step in arrivals else []):
            for handle in rows.add(prompt_rows):
                order[handle] = len(tokens)
                tokens.append([])
        if rows:
            for handle, token, _ in rows.choose():
                tokens[order[handle]].append(token)
            for gone in (drops or {}).get(step, []):
                rows.drop(next(h for h, i in order.items() if i == gone))
            rows.advance()
            lengths.append(rows.context.cache.length if rows else 0)
        step += 1
    return tokens, lengths


def test_rows_joining_a_running_batch_decode_what_they_would_alone(trained):
    """Continuous batching: a longer prompt joins (the running rows get padding at the left), two join at once,
    rows end at different steps and leave; greedy rows equal the same prompts decoded alone."""
    prompts = [[1, 2, 3], list(range(V)), [5, 6], [7, 8, 9, 10]]
    options = {"max_new_tokens": 12, "temperature": 0}
    alone = [trained.generate([p], **options)[0] for p in prompts]
    with torch.no_grad():
        tokens, lengths = run_rows(trained.running_rows(**options), {0: prompts[:1], 4: prompts[1:2], 9: prompts[2:]})
    assert tokens == alone
    # the cache is as long as its longest row: 16 + 11 fed tokens at most, and shorter once that row has left
    assert max(lengths) == 16 + 11 and lengths[-1] < 16
    assert lengths[:4] == [4, 5, 6, 7]


def test_a_dropped_row_leaves_and_the_others_go_on(trained):
    options = {"max_new_tokens": 10, "temperature": 0}
    prompts = [[1, 2, 3], [4, 5]]
    alone = [trained.generate([p], **options)[0] for p in prompts]
    with torch.no_grad():
        tokens, _ = run_rows(trained.running_rows(**options), {0: prompts}, drops={2: [0]})
    assert tokens == [alone[0][:3], alone[1]]


def test_running_rows_past_block_size_and_bad_prompts(trained):
    rows = trained.running_rows(max_new_tokens=60, temperature=0)  # block_size 32: the rows slide
    with torch.no_grad():
        tokens, _ = run_rows(rows, {0: [[1, 2]], 30: [[3] * 5]})
    assert [len(t) for t in tokens] == [60, 60] and rows.context.rebuilds > 0
    with pytest.raises(UserError, match="outside the model's vocabulary"):
        rows.add([[V + 1]])
    assert len(rows) == 0
    with pytest.raises(UserError, match="num_beams"):
        trained.running_rows(num_beams=2)


def test_sequences_within_block_size_never_slide(trained):
    prompt = [1, 2, 3]
    out, _, slides = windowed_reference(trained, [prompt], 29, keep=1)  # 3 + 29 = 32 = block_size
    assert slides == 0
    assert trained.generate([prompt], max_new_tokens=29, temperature=0, window_keep=1) == out


def test_debug_model_generates_past_its_context(trained):
    out = trained.sample(2, max_new_tokens=100, generator=torch.Generator().manual_seed(0))  # block_size 32
    assert [len(row) for row in out] == [100, 100]
    beams = trained.generate([[1, 2, 3], [4]], max_new_tokens=70, num_beams=3)
    assert [len(row) for row in beams] == [70, 70]
    assert trained.generate([[1, 2, 3]], max_new_tokens=70, num_beams=3)[0] == beams[0]  # the longest row: exact
    streamed = list(trained.stream([[1]], max_new_tokens=50, temperature=0))
    assert [s[0] for s in streamed] == trained.generate([[1]], max_new_tokens=50, temperature=0)[0]


# --------------------------------------------------------------------------------------------------------------
# Pinned outputs of the trained debug model


def test_greedy_pinned(trained):
    out = trained.generate([[1, 2, 3], [4]], max_new_tokens=8, temperature=0)
    assert out == [[6, 13, 15, 6, 13, 15, 2, 12], [9, 13, 15, 2, 12, 0, 10, 6]]


def test_beam_search_pinned(trained):
    out = trained.generate([[1, 2, 3], [4]], max_new_tokens=8, num_beams=3)
    assert out == [[6, 13, 15, 6, 13, 15, 6, 13], [9, 13, 15, 6, 13, 15, 6, 13]]
    # with an eos token, finished hypotheses compete by sum(log p) / generated_len ** length_penalty (HF semantics):
    # 0 prefers short endings, 2 long ones
    def beams(eos: int, length_penalty: float) -> list[list[int]]:
        return trained.generate([[1, 2, 3], [4]], max_new_tokens=8, num_beams=3, eos_token_ids=[eos],
                                length_penalty=length_penalty)
    assert beams(2, 0.0) == [[6, 13, 15, 2], [9, 13, 15, 2]]
    assert beams(2, 1.0) == [[6, 13, 15, 6, 13, 15, 6, 13], [9, 13, 15, 6, 13, 15, 2]]
    assert beams(15, 2.0) == [[6, 10, 5, 8, 3, 6, 13, 15], [9, 13, 10, 6, 10, 6, 13, 15]]
    # why row 1 ends in eos at length_penalty 1: its mean log-prob beats the running 8-token beam's
    ended, running = [9, 13, 15, 6, 13, 15, 2], [9, 13, 15, 6, 13, 15, 6, 13]
    assert sequence_logprob(trained, [4], ended) / 7 > sequence_logprob(trained, [4], running) / 8


def sequence_logprob(model: GPT, prompt: list[int], new: list[int]) -> float:
    with torch.no_grad():
        logp = model(torch.tensor([prompt + new])).log_softmax(dim=-1)[0]
    return sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(new))


def test_beam_search_with_vocabulary_wide_beam_is_exhaustive(trained):
    # num_beams = V keeps every 1-token prefix, so after 2 steps the best beam is the best of all V^2 continuations
    best = max(itertools.product(range(V), repeat=2), key=lambda new: sequence_logprob(trained, [4], list(new)))
    assert trained.generate([[4]], max_new_tokens=2, num_beams=V) == [list(best)]


# --------------------------------------------------------------------------------------------------------------
# Sampling filters


def test_filters_keep_exactly_the_allowed_tokens():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = lambda out: torch.isfinite(out)[0].nonzero().flatten().tolist()  # noqa: E731
    assert kept(keep_top_k(logits, 2)) == [0, 1]
    assert kept(keep_top_p(logits, 0.8)) == [0, 1]  # 0.5 + 0.3 reaches 0.8
    assert kept(keep_top_p(logits, 0.81)) == [0, 1, 2]
    assert kept(keep_top_p(logits, 0.01)) == [0]  # the top token always stays
    assert kept(keep_min_p(logits, 0.2)) == [0, 1, 2]  # threshold 0.2 * 0.5 = 0.1
    # many draws from the filtered distribution never pick a dropped token
    generator = torch.Generator().manual_seed(0)
    for out, allowed in [(keep_top_k(logits, 2), {0, 1}), (keep_top_p(logits, 0.81), {0, 1, 2}),
                         (keep_min_p(logits, 0.5), {0, 1})]:
        draws = torch.multinomial(out.softmax(-1).expand(2000, -1), 1, generator=generator).flatten()
        assert set(draws.tolist()) == allowed


def test_filters_end_to_end(trained):
    logits = [0.0] * V
    logits[3], logits[7], logits[11] = 3.0, 2.5, 2.0
    generator = torch.Generator().manual_seed(0)
    with FixedLogits(trained, logits):
        for options, allowed in [({"top_k": 2}, {3, 7}), ({"top_p": 0.5}, {3, 7}), ({"min_p": 0.5}, {3, 7}),
                                 ({"top_k": 3, "temperature": 5.0}, {3, 7, 11})]:
            out = trained.generate([[1]] * 8, max_new_tokens=25, generator=generator, **options)
            assert {t for row in out for t in row} == allowed, options


def test_sampling_is_seeded(trained):
    def run(seed: int) -> list[list[int]]:
        return trained.generate([[1], [2, 3]], max_new_tokens=12, generator=torch.Generator().manual_seed(seed))
    assert run(0) == run(0)
    assert run(0) != run(1)


def test_repetition_penalty(trained):
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -2.0, 0.5, 1.0]]
    fixed = [0.0] * V
    fixed[3], fixed[5] = 2.0, 1.5
    with FixedLogits(trained, fixed):
        assert trained.generate([[1]], max_new_tokens=5, temperature=0) == [[3, 3, 3, 3, 3]]
        # once 3 is seen its logit halves to 1.0 < 1.5; once both are seen, 3 (1.0) beats 5 (0.75) again
        assert trained.generate([[1]], max_new_tokens=5, temperature=0, repetition_penalty=2.0) == [[3, 5, 3, 3, 3]]
        # the prompt counts as seen, as in HF
        assert trained.generate([[3]], max_new_tokens=1, temperature=0, repetition_penalty=2.0) == [[5]]


def test_no_repeat_ngram(trained):
    assert repeated_ngram_tokens([1, 2, 3, 1, 2], 3) == [3]
    assert repeated_ngram_tokens([1, 2, 3], 1) == [1, 2, 3]
    fixed = [float(-i) for i in range(V)]  # token 0 is always the favourite, then 1, 2, ...
    with FixedLogits(trained, fixed):
        out = trained.generate([[0]], max_new_tokens=10, temperature=0, no_repeat_ngram_size=2)[0]
        sequence = [0] + out
        bigrams = list(zip(sequence, sequence[1:]))
        assert len(bigrams) == len(set(bigrams))
        assert out[:4] == [0, 1, 0, 2]
        beams = trained.generate([[0]], max_new_tokens=10, num_beams=2, no_repeat_ngram_size=2)[0]
        assert len(set(zip([0] + beams, beams))) == len(beams)


# --------------------------------------------------------------------------------------------------------------
# Stopping, streaming, sample()


def test_eos_and_stop_strings():
    tokenizer = CharTokenizer.train("ab\n")  # ids: "\n"=0, "a"=1, "b"=2
    model = debug_model(tokenizer.vocab_size)
    model.tokenizer = tokenizer
    with FixedLogits(model, [0.0, 1.0, 0.5]):  # greedy says "a" forever
        assert model.generate([[2]], max_new_tokens=6, temperature=0) == [[1] * 6]
        assert model.generate([[2]], max_new_tokens=6, temperature=0, eos_token_ids=[1]) == [[1]]
        assert model.generate([[2]], max_new_tokens=6, temperature=0, stop_strings=["aaa"],
                              decode=tokenizer.decode) == [[1, 1, 1]]
        # the prompt is not searched: "aa" + "a" completes "aaa" only in the new text after 3 tokens
        assert model.sample(1, cond="baa", max_new_tokens=6, temperature=0, stop_strings=["aaa"]) == ["baaaaa"]
    with FixedLogits(model, [0.0, 1.0, 0.5]), pytest.raises(UserError, match="sample.stop_strings"):
        model.generate([[2]], max_new_tokens=3, stop_strings=["a"])  # no decode function


def test_streaming_matches_generate(trained):
    prompts = [[1, 2], [3]]
    expected = trained.generate(prompts, max_new_tokens=6, temperature=0, eos_token_ids=[15])
    steps = list(trained.stream(prompts, max_new_tokens=6, temperature=0, eos_token_ids=[15]))
    streamed = [[s[row] for s in steps if s[row] is not None] for row in range(2)]
    assert streamed == expected
    calls: list[tuple[int, int]] = []
    trained.generate(prompts, max_new_tokens=6, temperature=0, eos_token_ids=[15],
                     on_token=lambda r, t: calls.append((r, t)))
    assert [[t for r, t in calls if r == row] for row in range(2)] == expected


def test_sample_with_and_without_tokenizer(trained):
    out = trained.sample(3, cond=[1, 2], max_new_tokens=4, generator=torch.Generator().manual_seed(0))
    assert len(out) == 3 and all(len(row) == 4 for row in out)
    tokenizer = CharTokenizer.train("abcdefghijklmnop")
    model = debug_model(tokenizer.vocab_size)
    model.tokenizer = tokenizer
    texts = model.sample(2, cond=["ab", "p"], max_new_tokens=5, generator=torch.Generator().manual_seed(0))
    assert texts[0].startswith("ab") and len(texts[0]) == 7 and texts[1].startswith("p") and len(texts[1]) == 6
    with pytest.raises(UserError, match="newline"):  # unconditional starts from "\n", unknown to this vocabulary
        model.sample(1, max_new_tokens=2)
    with pytest.raises(UserError, match="2 prompts for 3 samples"):
        model.sample(3, cond=["a", "b"], max_new_tokens=2)


def test_generation_runs_in_eval_mode_and_restores_it():
    model = debug_model(dropout=0.5)
    model.train()
    first = model.generate([[1, 2]], max_new_tokens=6, temperature=0)
    assert model.generate([[1, 2]], max_new_tokens=6, temperature=0) == first  # no dropout noise
    assert model.training


def test_generation_under_bf16_autocast(trained):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = trained.generate([[1, 2, 3], [4]], max_new_tokens=4, temperature=0)
    assert [len(row) for row in out] == [4, 4]


# --------------------------------------------------------------------------------------------------------------
# Errors


def test_prompt_longer_than_the_context_is_an_error(trained):
    with pytest.raises(UserError, match=r"prompt 1 has 33 tokens.*`model.block_size` = 32.*at most 32 tokens"):
        trained.generate([[1], [1] * 33], max_new_tokens=3)
    assert len(trained.generate([[1] * 32], max_new_tokens=3)[0]) == 3  # a full context is fine: it slides
    with pytest.raises(UserError, match=r"`sample.window_keep` \(33\).*1 <= N <= 32"):
        trained.generate([[1]], max_new_tokens=3, window_keep=33)


@pytest.mark.parametrize("prompts, options, message", [
    ([[1], []], {}, "prompt 1 is empty"),
    ([[1, 16]], {}, r"token id 16 at position 1, outside the model's vocabulary \[0, 16\)"),
    ([[1, -1]], {}, "token id -1"),
    ([], {}, "no prompts"),
    ([[1]], {"top_p": 1.5}, "sample.top_p"),
    ([[1]], {"max_new_token": 3}, "unknown key `sample.max_new_token`"),
    ([[1]], {"num_beams": 2, "top_k": 5}, "sample.top_k"),
    ([[1]], {"eos_token_ids": [99]}, "sample.eos_token_ids"),
])
def test_bad_requests_are_user_errors(trained, prompts, options, message):
    with pytest.raises(UserError, match=message):
        trained.generate(prompts, max_new_tokens=2, **options)


def test_beam_search_cannot_stream(trained):
    with pytest.raises(UserError, match="sample.num_beams"):
        trained.stream([[1]], max_new_tokens=2, num_beams=2)  # raised at the call, before iterating
    with pytest.raises(UserError, match="sample.num_beams"):
        trained.generate([[1]], max_new_tokens=2, num_beams=2, on_token=lambda r, t: None)
