"""One-step term rewriting: every target checked against a reference that parses the source's tokens into trees,
matches the rule's lhs against the term and applies the rhs (tests/term_reference.py, independent of core.sequence);
rule frequencies, depth and length bounds worked out by hand, seeding independent of the split into calls, the
train/test split, refused configs and the token ranges."""
import re

import numpy as np
import pyarrow as pa
import pytest

from core.sequence.lime import BOS, EOS, MAPS, N_SPECIAL, PAD, SEP, columns
from core.sequence.rewriting import RULES, SYMBOLS, RewriteConfig, decode, encode, generate, split, token
from term_reference import ARITY, PATTERN_VARIABLES, apply, flatten, names_of, substitution, tree

# Per default rule: the longest term, source and target when every variable gets a full binary tree of depth 3
# (15 symbols): term = lhs symbols + occurrences x 14, source = lhs + 1 + rhs + 1 + term, target = rhs + rhs vars x 14.
BOUNDS = {0: (17, 23, 15), 1: (31, 39, 31), 2: (47, 61, 63), 3: (17, 23, 15), 4: (47, 59, 47), 5: (32, 43, 33),
          6: (31, 41, 47), 7: (32, 43, 33)}
OFFSET = RewriteConfig(symbol_offset=500)


def depth(term: tuple) -> int:
    """A constant's depth is 0."""
    return 1 + max(depth(a) for a in term[1:]) if len(term) > 1 else 0


def read_back(example, config=RewriteConfig()) -> tuple[tuple, tuple, tuple, dict]:
    """(lhs, rhs, term, sigma) from the source's tokens alone."""
    source = [int(t) for t in example.source]
    assert source.count(MAPS) == 1 and source.count(SEP) == 1 and source.index(MAPS) < source.index(SEP)
    cut, bar = source.index(MAPS), source.index(SEP)
    lhs, rhs, term = (tree(names_of(part, config)) for part in (source[:cut], source[cut + 1:bar], source[bar + 1:]))
    sigma = substitution(lhs, term)
    assert sigma is not None, (lhs, term)
    return lhs, rhs, term, sigma


def same(a: list, b: list) -> bool:
    """Two lists of examples alike in every field."""
    return len(a) == len(b) and all(
        x.task == y.task and x.rule == y.rule and list(x.bindings) == list(y.bindings)
        and all(np.array_equal(x.bindings[v], y.bindings[v]) for v in x.bindings)
        and all(np.array_equal(getattr(x, f), getattr(y, f)) for f in ("term", "source", "target"))
        for x, y in zip(a, b))


@pytest.mark.parametrize("config", [RewriteConfig(), OFFSET, RewriteConfig(max_depth=1)], ids=["default", "offset",
                                                                                                 "depth1"])
def test_the_target_is_the_rhs_under_the_match_of_the_lhs_read_back_from_the_tokens(config):
    for seed in (0, 7):
        for e in generate(seed, 0, 200, config):
            lhs, rhs, term, sigma = read_back(e, config)
            assert [int(t) for t in e.target] == [N_SPECIAL + config.symbol_offset + SYMBOLS[name]
                                                  for name in flatten(apply(rhs, sigma))]
            assert names_of(e.target, config) == flatten(apply(rhs, sigma))
            assert " ".join(flatten(lhs)) + " -> " + " ".join(flatten(rhs)) == " ".join(RULES[e.rule].split())
            assert np.array_equal(e.term, e.source[list(e.source).index(SEP) + 1:])
            assert not PATTERN_VARIABLES & set(flatten(term))  # the term is ground
            assert list(e.bindings) == list(dict.fromkeys(n for n in flatten(lhs) if n in PATTERN_VARIABLES))
            assert {v: names_of(b, config) for v, b in e.bindings.items()} == {v: flatten(t) for v, t in sigma.items()}
            assert e.task == "rewrite"


def test_every_rule_is_drawn_uniformly():
    n, k = 4000, len(RULES)
    counts = np.bincount([e.rule for e in generate(3, 0, n)], minlength=k)
    standard_error = np.sqrt(n * (1 / k) * (1 - 1 / k))
    assert len(counts) == k and np.all(np.abs(counts - n / k) < 3 * standard_error), counts


@pytest.mark.parametrize("max_depth", [0, 1, 3])
def test_substituted_terms_keep_the_depth_bound_and_reach_it(max_depth):
    depths = [depth(t) for e in generate(5, 0, 600, RewriteConfig(max_depth=max_depth))
              for t in read_back(e)[3].values()]
    assert max(depths) == max_depth and min(depths) == 0


def test_a_node_with_depth_left_is_a_constant_a_third_of_the_time():
    roots = [names_of(b)[0] for e in generate(9, 0, 3000) for b in e.bindings.values()]
    n, share = len(roots), {"constant": 1 / 3, "unary": 1 / 6, "binary": 1 / 2}
    kinds = {"constant": sum(ARITY[r] == 0 for r in roots), "unary": sum(ARITY[r] == 1 for r in roots),
             "binary": sum(ARITY[r] == 2 for r in roots)}
    for kind, p in share.items():
        assert abs(kinds[kind] - n * p) < 3 * np.sqrt(n * p * (1 - p)), kinds


def test_lengths_keep_the_bounds_worked_out_by_hand():
    examples = generate(2, 0, 2000)
    for e in examples:
        term, source, target = BOUNDS[e.rule]
        assert len(e.term) <= term and len(e.source) <= source and len(e.target) <= target
    assert max(len(e.source) for e in examples) <= 61 and max(len(e.target) for e in examples) <= 63
    fixed = generate(2, 0, 50, RewriteConfig(max_depth=0))  # every variable a constant: lengths fixed per rule
    for e in fixed:
        lhs, rhs = (side.split() for side in RULES[e.rule].split("->"))
        assert len(e.term) == len(lhs) and len(e.target) == len(rhs) and len(e.source) == 2 * len(lhs) + len(rhs) + 2


@pytest.mark.parametrize("config", [RewriteConfig(), OFFSET], ids=["default", "offset"])
def test_tokens_are_the_named_symbols_and_two_separators(config):
    low, high = N_SPECIAL + config.symbol_offset, N_SPECIAL + config.symbol_offset + len(SYMBOLS)
    for e in generate(1, 0, 300, config):
        source, target = e.source.tolist(), e.target.tolist()
        assert e.source.dtype == e.target.dtype == e.term.dtype == np.int32
        assert sorted(t for t in source if t < N_SPECIAL) == sorted([MAPS, SEP])
        assert all(low <= t < high for t in source if t not in (MAPS, SEP)) and all(low <= t < high for t in target)
        assert not {PAD, BOS, EOS} & set(source + target)
        assert max(source + target) < config.total_vocab == N_SPECIAL + 1000


def test_symbols_sit_at_fixed_positions():
    assert sorted(SYMBOLS) == sorted("fgkhnabcde01xyz") and sorted(SYMBOLS.values()) == list(range(15))
    assert token("f") == N_SPECIAL + SYMBOLS["f"] and token("f", OFFSET) == N_SPECIAL + 500 + SYMBOLS["f"]
    # one symbol is the same token in every example: here `h`, which every rule-4 source starts with
    heads = {int(e.source[0]) for e in generate(4, 0, 200) if e.rule == 3}
    assert heads == {token("h")}


def test_generation_is_seeded_and_independent_of_the_split_into_calls():
    whole = generate(13, 0, 100)
    assert same(whole, generate(13, 0, 100))
    assert same(whole, generate(13, 0, 37) + generate(13, 37, 63))
    assert same(whole[50:60], generate(13, 50, 10))
    other = generate(14, 0, 100)
    assert sum(np.array_equal(a.source, b.source) for a, b in zip(whole, other)) < 30
    tests = generate(13, 0, 100, stream="test")
    assert sum(np.array_equal(a.source, b.source) for a, b in zip(whole, tests)) < 30


def test_split_nests_the_training_sets_and_keeps_test_sources_new():
    small, test_small = split(3, 40, 30)
    large, test_large = split(3, 400, 300)
    assert same(small, large[:40]) and same(large, generate(3, 0, 400))
    trained = {tuple(e.source.tolist()) for e in large}
    tested = [tuple(e.source.tolist()) for e in test_large]
    assert len(test_large) == 300 and len(set(tested)) == 300 and not trained & set(tested)
    assert same(split(3, 400, 300)[1], test_large)
    assert len(test_small) == 30 and not {tuple(e.source.tolist()) for e in small} & {
        tuple(e.source.tolist()) for e in test_small}


def test_split_refuses_a_test_set_it_cannot_draw():
    tiny = RewriteConfig(rules=("h h x -> x",), max_depth=0)  # exactly 7 sources: one per constant
    _, test = split(0, 0, 7, tiny)
    assert len({tuple(e.source.tolist()) for e in test}) == 7
    with pytest.raises(ValueError, match=re.escape("found only 7 of n_test=8 test examples with sources new to the"
                                                   " training set and to each other in 1080 draws")):
        split(0, 0, 8, tiny)
    with pytest.raises(ValueError, match=re.escape("found only 0 of n_test=1 test examples")):
        split(0, 500, 1, tiny)


def test_columns_make_a_pyarrow_table():
    examples = generate(0, 0, 20)
    table = pa.table(columns(examples))
    assert table.column("task").to_pylist() == ["rewrite"] * 20
    assert table.column("source_length").to_pylist() == [len(e.source) for e in examples]
    assert table.column("target").to_pylist()[3] == examples[3].target.tolist()


def test_decode_writes_names_and_encode_reads_them():
    assert decode(encode("f h a g b c")) == "f h a g b c"
    assert decode(encode("f h a g b c", OFFSET), OFFSET) == "f h a g b c"
    assert decode([SEP, MAPS, 0, N_SPECIAL + 999]) == "| : <pad> s999"
    e = generate(0, 0, 1)[0]
    assert decode(e.source).startswith(" ".join(RULES[e.rule].split()).replace("->", ":") + " | ")


@pytest.mark.parametrize("fields, message", [
    ({"rules": ("k x y -> f y g z z",)}, "rules[0] 'k x y -> f y g z z': rhs variable(s) z do not occur in the lhs"),
    ({"rules": ("h h x -> x", "f x w -> x")}, "rules[1] 'f x w -> x': unknown symbol 'w'"),
    ({"rules": ("f x -> x",)}, "rules[0] 'f x -> x': the lhs is incomplete: 1 more argument(s) needed"),
    ({"rules": ("h x y -> x",)}, "rules[0] 'h x y -> x': the lhs has tokens after a complete term: 'y'"),
    ({"rules": ("x -> h x",)}, "rules[0] 'x -> h x': the lhs must start with an operator, not 'x'"),
    ({"rules": ("h x",)}, "rules[0] 'h x' is not of the form 'lhs -> rhs'"),
    ({"rules": ("h x -> ",)}, "rules[0] 'h x -> ': the rhs is empty"),
    ({"rules": ()}, "rules must be a non-empty tuple of 'lhs -> rhs' strings, not ()"),
    ({"rules": ["h h x -> x"]}, "rules must be a non-empty tuple of 'lhs -> rhs' strings, not ['h h x -> x']"),
    ({"symbol_offset": 986}, "symbol_offset 986 is too large: the 15 named symbols need symbol_offset + 15 <="
                             " vocab_size = 1000"),
    ({"vocab_size": 14}, "symbol_offset 0 is too large: the 15 named symbols need symbol_offset + 15 <="
                         " vocab_size = 14"),
    ({"max_depth": -1}, "max_depth must be a non-negative integer, not -1"),
    ({"symbol_offset": 1.5}, "symbol_offset must be a non-negative integer, not 1.5"),
])
def test_bad_configs_are_refused(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        RewriteConfig(**fields)


def test_boundary_configs_are_accepted():
    assert RewriteConfig(symbol_offset=985).symbol_offset == 985
    assert RewriteConfig(vocab_size=15).total_vocab == N_SPECIAL + 15


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match=re.escape("seed and counts must be non-negative integers, not (0, -1, 5)")):
        generate(0, -1, 5)
    with pytest.raises(ValueError, match=re.escape("unknown stream 'valid': use one of ('train', 'test')")):
        generate(0, 0, 5, stream="valid")
