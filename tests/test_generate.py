"""Generation: the KV-cache loop against full recomputation, the samplers, EOS, compile reuse.

The parameters are random but large (std ~1 instead of 0.02), so the logits are spread out and
the arg-max is decided by a wide margin: a cache bug changes tokens, rounding does not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumi_jax import generate
from lumi_jax.errors import UserError
from lumi_jax.model import forward, init_params

PROMPTS = [[1, 5, 6, 7, 300], [1, 9]]  # different lengths: the batch is left-padded
NEW_TOKENS = 20


@pytest.fixture(scope="module")
def spread_params(micro_config):
    params = init_params(micro_config, jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))

    def spread(leaf, key):
        if leaf.ndim == 1:  # norm scales stay 1
            return leaf
        std = 1.0 if leaf.shape[0] == micro_config.vocab_size else 2 / np.sqrt(leaf.shape[0])
        return jax.random.normal(key, leaf.shape) * std

    return jax.tree.unflatten(tree, [spread(leaf, key) for leaf, key in zip(leaves, keys, strict=True)])


def greedy_by_recomputation(config, params, prompts, steps):
    """The reference: run every whole sequence through the model again for each new token.

    Rows are right-padded to one fixed length (one compilation); the model is causal, so the
    padding after a row's last token cannot change that token's logits."""
    length = max(map(len, prompts)) + steps
    score = jax.jit(lambda tokens_BT: forward(config, params, tokens_BT))
    rows, margins = [list(p) for p in prompts], []
    for _ in range(steps):
        tokens_BT = np.zeros((len(rows), length), np.int32)
        for r, ids in enumerate(rows):
            tokens_BT[r, :len(ids)] = ids
        logits_BTV = np.asarray(score(tokens_BT))
        for r, ids in enumerate(rows):
            logits_V = logits_BTV[r, len(ids) - 1]
            top_two = np.sort(logits_V)[-2:]
            margins.append(top_two[1] - top_two[0])
            ids.append(int(np.argmax(logits_V)))
    return [ids[len(p):] for ids, p in zip(rows, prompts, strict=True)], min(margins)


@pytest.fixture(scope="module")
def greedy_batch(micro_config, spread_params):
    return generate.generate_ids(micro_config, spread_params, PROMPTS, max_new_tokens=NEW_TOKENS,
                                 sampling=generate.GREEDY, eos_id=-1)


def test_cached_greedy_equals_greedy_recomputation(micro_config, spread_params, greedy_batch):
    expected, margin = greedy_by_recomputation(micro_config, spread_params, PROMPTS, NEW_TOKENS)
    assert margin > 1e-3, "the reference's arg-max is too close to call; spread the parameters more"
    assert [r.new_ids for r in greedy_batch] == expected
    assert [r.prompt_ids for r in greedy_batch] == PROMPTS
    assert not any(r.hit_eos for r in greedy_batch)


def test_arg_max_is_jnp_argmax_with_ties_infinities_and_nans():
    rng = np.random.default_rng(0)
    rows = [rng.normal(size=300).astype(np.float32) for _ in range(4)]
    rows[1][[17, 250]] = rows[1].max() + 1  # a tie: the first one wins
    rows[2][:] = -np.inf
    rows[3][[5, 90]] = np.nan  # NaN counts as the largest, the first one wins
    values = jnp.asarray(np.stack(rows))
    np.testing.assert_array_equal(generate.arg_max(values), jnp.argmax(values, axis=-1))
    assert generate.arg_max(values).tolist() == [int(np.argmax(rows[0])), 17, 0, 5]


def test_the_decoding_layout_is_made_once_per_set_of_weights(micro_config, spread_params):
    first = generate.with_decoding_layout(spread_params, micro_config)
    assert generate.with_decoding_layout(spread_params, micro_config) is first
    changed = jax.tree.map(lambda leaf: leaf * 1.0, spread_params)
    assert generate.with_decoding_layout(changed, micro_config) is not first


def test_top_k_one_equals_greedy(micro_config, spread_params, greedy_batch):
    for seed in (0, 1):
        sampled = generate.generate_ids(micro_config, spread_params, PROMPTS, max_new_tokens=NEW_TOKENS,
                                        sampling=generate.Sampling(temperature=1.5, top_k=1, top_p=1.0),
                                        seed=seed, eos_id=-1)
        assert [r.new_ids for r in sampled] == [r.new_ids for r in greedy_batch]


def test_sampling_depends_on_seed_and_repeats_with_it(micro_config, spread_params):
    def draw(seed):
        results = generate.generate_ids(micro_config, spread_params, PROMPTS, max_new_tokens=NEW_TOKENS,
                                        sampling=generate.Sampling(temperature=1.0, top_k=0, top_p=1.0),
                                        seed=seed, eos_id=-1)
        return [r.new_ids for r in results]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_top_p_keeps_the_smallest_set_over_the_mass():
    probs = np.array([[0.05, 0.5, 0.15, 0.3]])  # sorted: 0.5, 0.3, 0.15, 0.05
    logits = jnp.log(jnp.asarray(probs))

    def kept(top_p, top_k=0):
        out = generate.filter_logits(logits, jnp.float32(1.0), jnp.int32(top_k), jnp.float32(top_p))
        return set(np.flatnonzero(np.isfinite(np.asarray(out[0]))).tolist())

    assert kept(0.4) == {1}  # 0.5 alone reaches 0.4
    assert kept(0.5) == {1}  # exactly reached: no second token
    assert kept(0.7) == {1, 3}  # 0.5 + 0.3
    assert kept(0.81) == {1, 3, 2}
    assert kept(1.0) == {0, 1, 2, 3}
    assert kept(1.0, top_k=2) == {1, 3}
    assert kept(0.9, top_k=2) == {1, 3}  # top-p works on what top-k left


def kept_by_sorting(logits_V, top_k, top_p):
    """The reference for the filters: rank by sorting, keep ranks < k, then the smallest prefix
    of the renormalised distribution whose mass reaches p."""
    order = np.argsort(-logits_V, kind="stable")
    if top_k:
        order = order[:top_k]
    probs = np.exp(logits_V[order] - logits_V[order].max())
    probs /= probs.sum()
    mass_above = np.cumsum(probs) - probs
    return set(order[(mass_above < top_p) | (top_p >= 1)].tolist())


def test_filters_match_a_sorting_reference_on_random_logits():
    rng = np.random.default_rng(0)
    logits_BV = rng.normal(0, 3, (32, 512)).astype(np.float32)
    settings = [(int(rng.integers(0, 40)), float(rng.uniform(0.05, 1.0))) for _ in range(6)] + [(0, 1.0), (1, 1.0)]
    filter_logits = jax.jit(generate.filter_logits)  # one compilation for every setting
    for top_k, top_p in settings:
        out = np.asarray(filter_logits(jnp.asarray(logits_BV), jnp.float32(1.0), jnp.int32(top_k),
                                       jnp.float32(top_p)))
        for row in range(len(logits_BV)):
            assert set(np.flatnonzero(np.isfinite(out[row])).tolist()) == kept_by_sorting(
                logits_BV[row].astype(np.float64), top_k, top_p), (top_k, top_p, row)


def test_sampled_tokens_stay_inside_the_kept_set():
    logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3]] * 256))
    tokens = generate.sample_tokens(logits, jax.random.key(0), jnp.float32(1.0), jnp.int32(0),
                                    jnp.float32(0.7), jnp.bool_(False))
    drawn = set(np.asarray(tokens).tolist())
    assert drawn == {1, 3}


def test_generation_stops_at_eos(micro_config, spread_params, greedy_batch):
    # Declare a token the first row produces as "EOS": that row must stop just before it,
    # while the other row (which never produces it) runs on unchanged.
    first_row = greedy_batch[0].new_ids
    stop_token = first_row[6]
    assert stop_token not in greedy_batch[1].new_ids, "pick a stop token only the first row makes"
    stopped = generate.generate_ids(micro_config, spread_params, PROMPTS, max_new_tokens=NEW_TOKENS,
                                    sampling=generate.GREEDY, eos_id=stop_token)
    assert stopped[0].hit_eos
    assert stopped[0].new_ids == first_row[: first_row.index(stop_token)]
    assert stopped[1].new_ids == greedy_batch[1].new_ids and not stopped[1].hit_eos


def test_same_buckets_reuse_the_compiled_loop(micro_config, spread_params, greedy_batch):
    before = generate.compiled_count()
    for prompts, new_tokens in (([[1, 4]], 5), ([[1, 4, 4, 4, 4, 4], [1, 8, 9]], 17), ([[1] * 8], 9)):
        generate.generate_ids(micro_config, spread_params, prompts, max_new_tokens=new_tokens,
                              sampling=generate.Sampling(temperature=0.7, top_k=5))
    # batch 1 (prompts ≤ 8, ≤ 16 new tokens) is one new bucket; batch 2, prompts ≤ 8, ≤ 32 new tokens reuse
    # the fixture's.
    assert generate.compiled_count() - before == 1


def test_streaming_delivers_every_token_in_order(micro_config, spread_params, greedy_batch):
    seen: list[tuple[int, list[int]]] = []
    results = generate.generate_ids(micro_config, spread_params, PROMPTS, max_new_tokens=NEW_TOKENS,
                                    sampling=generate.GREEDY, eos_id=-1,
                                    on_token=lambda step, tokens: seen.append((step, tokens.tolist())))
    assert [step for step, _ in seen] == list(range(NEW_TOKENS))
    assert [tokens[0] for _, tokens in seen] == results[0].new_ids == greedy_batch[0].new_ids


def test_long_prompts_keep_their_end_and_bad_settings_are_refused(micro_config, spread_params):
    long_prompt = list(range(3, 3 + micro_config.max_seq_len + 10))
    (result,) = generate.generate_ids(micro_config, spread_params, [long_prompt], max_new_tokens=4)
    assert result.prompt_ids == long_prompt[-(micro_config.max_seq_len - 4):]
    (with_bos,) = generate.generate_ids(micro_config, spread_params, [[1, *long_prompt]], max_new_tokens=4)
    assert with_bos.prompt_ids == [1, *long_prompt[-(micro_config.max_seq_len - 5):]]  # BOS stays
    with pytest.raises(UserError, match="max new tokens"):
        generate.generate_ids(micro_config, spread_params, PROMPTS, max_new_tokens=micro_config.max_seq_len)
    with pytest.raises(UserError, match="top-p"):
        generate.generate_ids(micro_config, spread_params, PROMPTS, max_new_tokens=4,
                              sampling=generate.Sampling(top_p=0))
    with pytest.raises(UserError, match="outside"):
        generate.generate_ids(micro_config, spread_params, [[1, micro_config.vocab_size]], max_new_tokens=4)


def test_lumi_generate_streams_the_greedy_continuation(tmp_path_factory, shared_data_dir, capsys):
    from eval_runs import trained_runs

    from lumi_jax import cli
    from lumi_jax.runs import load_run

    run = trained_runs(tmp_path_factory, shared_data_dir)["under_trained"]
    loaded = load_run(run)
    (expected,) = generate.generate_ids(loaded.model_config, loaded.params,
                                        [loaded.tokenizer.encode("The old", bos=True)], max_new_tokens=12)
    assert cli.main(["generate", "--run", str(run), "--prompt", "The old", "--greedy",
                     "--max-new-tokens", "12"]) == 0
    printed = capsys.readouterr().out
    assert printed == "The old" + loaded.tokenizer.decode(expected.new_ids) + "\n"


def test_lumi_generate_refuses_a_missing_run_in_one_line(tmp_path, capsys):
    from lumi_jax import cli
    from lumi_jax.errors import USER_ERROR_EXIT_STATUS

    with pytest.raises(SystemExit) as stopped:
        cli.main(["generate", "--run", str(tmp_path / "missing"), "--prompt", "x"])
    assert stopped.value.code == USER_ERROR_EXIT_STATUS
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no such run directory" in err and "\n" not in err


def test_chat_asks_in_the_instruction_template_and_keeps_the_history(tmp_path_factory, shared_data_dir,
                                                                      monkeypatch, capsys):
    from eval_runs import trained_runs

    from lumi_jax import cli
    from lumi_jax.data import template
    from lumi_jax.runs import load_run

    run = trained_runs(tmp_path_factory, shared_data_dir)["under_trained"]
    loaded = load_run(run)
    lines = iter(["Name a colour.", "And another?"])

    def typed(_prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", typed)
    assert cli.main(["generate", "--run", str(run), "--chat", "--greedy", "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out.splitlines()

    def answer(messages):
        prompt = loaded.tokenizer.encode(template.format_chat_prompt(messages), bos=True)
        (result,) = generate.generate_ids(loaded.model_config, loaded.params, [prompt], max_new_tokens=6,
                                          on_token=lambda *_: None)  # streaming, as the CLI: same compilation
        return loaded.tokenizer.decode(result.new_ids)

    first = answer([{"role": "user", "content": "Name a colour."}])
    second = answer([{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": first},
                     {"role": "user", "content": "And another?"}])
    assert "\n".join(printed) == first + "\n" + second


def test_draw_follows_the_softmax_and_never_picks_a_filtered_token():
    """The inverse-CDF draw: frequencies over 40,000 draws sit within 5 standard errors of the
    softmax probabilities, on a vocabulary that spans several blocks and ends mid-block."""
    rng = np.random.default_rng(0)
    V, draws = 3 * generate.DRAW_BLOCK + 100, 40_000
    logits_V = rng.normal(0, 1.5, V).astype(np.float32)
    logits_V[rng.choice(V, V // 3, replace=False)] = -np.inf  # filtered tokens, anywhere
    logits_V[-5:] = -np.inf  # including the vocabulary's end
    probs_V = np.exp(logits_V - logits_V.max())
    probs_V /= probs_V.sum()
    tokens = np.asarray(jax.jit(generate.draw)(jnp.asarray(np.tile(logits_V, (draws, 1))), jax.random.key(1)))
    counts_V = np.bincount(tokens, minlength=V)
    assert counts_V[~np.isfinite(logits_V)].sum() == 0
    standard_error_V = np.sqrt(probs_V * (1 - probs_V) / draws)
    assert np.all(np.abs(counts_V / draws - probs_V) <= 5 * standard_error_V + 1e-9)


def test_draw_reaches_the_first_and_the_last_allowed_token():
    V = 2 * generate.DRAW_BLOCK + 7
    only_first, only_last = np.full(V, -np.inf, np.float32), np.full(V, -np.inf, np.float32)
    only_first[0], only_last[V - 1] = 0.0, 0.0
    logits = jnp.asarray(np.stack([only_first, only_last] * 64))
    tokens = np.asarray(generate.draw(logits, jax.random.key(0)))
    assert set(tokens[0::2].tolist()) == {0} and set(tokens[1::2].tolist()) == {V - 1}
