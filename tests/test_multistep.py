"""Multi-step term rewriting: chains worked out by hand, matching with a repeated variable, every generated example
checked against a reference that parses the source's tokens into trees and rewrites them (written here,
independently of core.sequence.multistep), seeding per index, the nested split with new test sources, and the
refused settings."""
import re

import numpy as np
import pyarrow as pa
import pytest

from core.sequence.lime import BOS, ENTRY, EOS, MAPS, N_SPECIAL, PAD, SEP, columns
from core.sequence.multistep import (TASK, MultistepConfig, as_multistep, encode_source, generate, match, rewrite,
                                     split, subterm_end)
from core.sequence.rewriting import RULES, SYMBOLS, RewriteConfig, decode, encode, parse_rules
from core.sequence.rewriting import generate as one_step
from term_reference import PATTERN_VARIABLES, flatten, names_of, tree
from term_reference import rewrite as reference

RULE = parse_rules(RULES)
OFFSET = MultistepConfig(symbol_offset=500)


def read_back(example, config=MultistepConfig()) -> tuple[list[tuple[tuple, tuple]], tuple]:
    """([(lhs, rhs) per rule], start) as trees, from the source's tokens alone."""
    source = [int(t) for t in example.source]
    assert source.count(SEP) == 1
    bar = source.index(SEP)
    rules, entry = [], []
    for t in source[:bar] + [ENTRY]:
        if t != ENTRY:
            entry.append(t)
            continue
        assert entry.count(MAPS) == 1, entry
        cut = entry.index(MAPS)
        rules.append((tree(names_of(entry[:cut], config)), tree(names_of(entry[cut + 1:], config))))
        entry = []
    return rules, tree(names_of(source[bar + 1:], config))


def same(a: list, b: list) -> bool:
    """Two lists of examples alike in every field."""
    return len(a) == len(b) and all(
        x.task == y.task and x.rules == y.rules and x.tries == y.tries and len(x.terms) == len(y.terms)
        and all(np.array_equal(s, t) for s, t in zip(x.terms, y.terms))
        and np.array_equal(x.source, y.source) and np.array_equal(x.target, y.target) for x, y in zip(a, b))


def test_a_scripted_two_rule_chain_gives_the_term_worked_out_by_hand():
    # k x y -> f y g x x with x = h a, y = f b 0: f (f b 0) g (h a) (h a); then f x g y z -> g f x y f x z with
    # x = f b 0, y = z = h a: g f (f b 0) (h a) f (f b 0) (h a)
    start = "k h a f b 0".split()
    middle = rewrite(RULE[6], start)
    assert middle == "f f b 0 g h a h a".split()
    assert rewrite(RULE[2], middle) == "g f f b 0 h a f f b 0 h a".split()
    # f f x y z -> f x f y z also matches the middle term (x = b, y = 0, z = g h a h a); no other rule does
    assert rewrite(RULE[4], middle) == "f b f 0 g h a h a".split()
    assert [i for i, rule in enumerate(RULE) if rewrite(rule, middle) is not None] == [2, 4]
    source = encode_source([RULE[6], RULE[2]], start)
    assert decode(source) == "k x y : f y g x x , f x g y z : g f x y f x z | k h a f b 0"
    assert decode(encode_source([RULE[6], RULE[2]], start, OFFSET), OFFSET) == decode(source)


def test_a_generated_example_checked_by_hand():
    e = generate(0, 3, 1)[0]
    # start k (h n d) (n f 1 n 1): x = h n d, y = n f 1 n 1 (n takes one argument: n(f(1, n(1))))
    assert decode(e.source) == "k x y : f y g x x , f x g y z : g f x y f x z | k h n d n f 1 n 1"
    assert [decode(t) for t in e.terms[1:]] == ["f n f 1 n 1 g h n d h n d", "g f n f 1 n 1 h n d f n f 1 n 1 h n d"]
    assert decode(e.target) == "g f n f 1 n 1 h n d f n f 1 n 1 h n d"
    assert e.rules == (6, 2) and e.tries == 3 and e.task == TASK == "rewrite_multistep"


def test_a_repeated_variable_must_match_equal_subterms():
    same_twice = parse_rules(("f x x -> h x",))[0]
    assert match(same_twice.lhs, "f h a h a".split()) == {"x": ["h", "a"]}
    assert rewrite(same_twice, "f h a h a".split()) == ["h", "h", "a"]
    assert match(same_twice.lhs, "f h a h b".split()) is None
    assert match(same_twice.lhs, "f a g a b".split()) is None
    assert rewrite(same_twice, "f g a b g a b".split()) == "h g a b".split()
    assert match(RULE[0].lhs, "f g a b 0".split()) == {"x": ["g", "a", "b"]}
    assert match(RULE[0].lhs, "f a g 0 0".split()) is None and match(RULE[0].lhs, "g a 0".split()) is None
    assert subterm_end("f g a b h c d".split(), 1) == 4 and subterm_end("f g a b h c d".split(), 4) == 6


@pytest.mark.parametrize("config", [MultistepConfig(), OFFSET, MultistepConfig(max_depth=2),
                                    MultistepConfig(steps=3, tries=2000)],
                         ids=["default", "offset", "depth2", "steps3"])
def test_every_target_is_the_chain_of_the_source_rules_applied_by_a_reference(config):
    for e in generate(7, 0, 150 if config.steps == 2 else 40, config):
        rules, term = read_back(e, config)
        assert len(rules) == config.steps == len(e.rules) and len(e.terms) == config.steps + 1
        visited = [term]
        for number, (lhs, rhs) in zip(e.rules, rules):
            assert " ".join(flatten(lhs) + ["->"] + flatten(rhs)) == " ".join(RULES[number].split())
            term = reference(lhs, rhs, term)
            assert term is not None and term not in visited  # each rule matches at the root, and makes a new term
            visited.append(term)
        assert [names_of(t, config) for t in e.terms] == [flatten(t) for t in visited]
        assert names_of(e.target, config) == flatten(term) and np.array_equal(e.target, e.terms[-1])
        assert np.array_equal(e.term, e.source[list(e.source).index(SEP) + 1:])
        assert not PATTERN_VARIABLES & set(names_of(e.term, config)) and 1 <= e.tries <= config.tries


def test_chains_start_only_with_rules_that_something_can_follow():
    # after g x y -> g y x only the swap matches, which gives the start back; after h f x y -> f h y h x nothing does
    first = {e.rules[0] for e in generate(1, 0, 400)}
    assert first == {0, 2, 3, 4, 6, 7}


@pytest.mark.parametrize("config", [MultistepConfig(), OFFSET], ids=["default", "offset"])
def test_tokens_are_the_named_symbols_and_the_separators(config):
    low, high = N_SPECIAL + config.symbol_offset, N_SPECIAL + config.symbol_offset + len(SYMBOLS)
    for e in generate(2, 0, 200, config):
        source, target = e.source.tolist(), e.target.tolist()
        assert e.source.dtype == e.target.dtype == np.int32
        assert sorted(t for t in source if t < N_SPECIAL) == sorted([MAPS, MAPS, ENTRY, SEP])
        assert all(low <= t < high for t in source if t >= N_SPECIAL) and all(low <= t < high for t in target)
        assert not {PAD, BOS, EOS} & set(source + target)


def test_generation_is_seeded_per_index_and_independent_of_the_split_into_calls():
    whole = generate(13, 0, 100)
    assert same(whole, generate(13, 0, 100))
    assert same(whole, generate(13, 0, 37) + generate(13, 37, 63))
    assert same(whole[50:60], generate(13, 50, 10))
    assert sum(np.array_equal(a.source, b.source) for a, b in zip(whole, generate(14, 0, 100))) < 30
    assert sum(np.array_equal(a.source, b.source) for a, b in zip(whole, generate(13, 0, 100, stream="test"))) < 30
    # the salt: example i does not start from one-step rewriting's example i of the same seed
    assert sum(np.array_equal(a.term, b.term) for a, b in zip(whole, one_step(13, 0, 100))) < 30


def test_split_nests_the_training_sets_and_keeps_test_sources_new():
    small, test_small = split(3, 40, 30)
    large, test_large = split(3, 400, 300)
    assert same(small, large[:40]) and same(large, generate(3, 0, 400))
    trained = {e.source.tobytes() for e in large}
    tested = [e.source.tobytes() for e in test_large]
    assert len(test_large) == 300 and len(set(tested)) == 300 and not trained & set(tested)
    assert same(split(3, 400, 300)[1], test_large)
    assert len(test_small) == 30 and not {e.source.tobytes() for e in small} & {e.source.tobytes() for e in test_small}


def test_split_refuses_a_test_set_it_cannot_draw():
    # only `h x -> n x` then `n x -> g x x` chains (n x first: g x x matches nothing): one source per constant
    tiny = MultistepConfig(rules=("h x -> n x", "n x -> g x x"), max_depth=0)
    _, test = split(0, 0, 7, tiny)
    assert sorted(decode(e.source) for e in test) == [f"h x : n x , n x : g x x | h {c}" for c in sorted("abcde01")]
    assert {decode(e.target) for e in test} == {f"g {c} {c}" for c in "abcde01"}
    with pytest.raises(ValueError, match=re.escape("found only 7 of n_test=8 test examples with sources new to the"
                                                   " training set and to each other in 1080 draws")):
        split(0, 0, 8, tiny)
    with pytest.raises(ValueError, match=re.escape("found only 0 of n_test=1 test examples")):
        split(0, 500, 1, tiny)


def test_an_example_without_a_chain_is_refused_after_its_tries():
    stuck = MultistepConfig(rules=("h h x -> x",), max_depth=0, tries=5)  # h h c -> c: nothing follows a constant
    with pytest.raises(ValueError, match=re.escape("example 4 of stream 'test' (seed 2): no chain of 2 rules, each"
                                                   " matching the previous result at its root and giving a new term,"
                                                   " in 5 tries")):
        generate(2, 4, 1, stuck, stream="test")


def test_a_step_that_changes_nothing_is_no_step():
    # g x y -> g y x on g c c gives g c c back: only g x x -> h x, then h x -> n x, makes a chain (g c c, h c, n c)
    config = MultistepConfig(rules=("g x y -> g y x", "g x x -> h x", "h x -> n x"), max_depth=0)
    examples = generate(0, 0, 100, config)
    assert {e.rules for e in examples} == {(1, 2)}
    assert {decode(e.source) + " => " + decode(e.target) for e in examples} == {
        f"g x x : h x , h x : n x | g {c} {c} => n {c}" for c in "abcde01"}


def test_length_bounds_worked_out_by_hand_hold_and_guard_the_position_table():
    # depth 3: a full tree has 15 symbols; the longest start is f x g y z's: 2 + 3 x 15 = 47; the longest rule
    # f x g y z : g f x y f x z has 13 tokens, so 2 x (13 + 1) + 47 = 75 (one separator per rule: , or |)
    config = MultistepConfig()
    assert (config.longest_start, config.longest_source) == (47, 75)
    # k x y -> f y g x x doubles x: 2 + 2 x (47 - 1) = 94, then 2 + 2 x 93 = 188
    assert config.longest_target == 188
    examples = generate(4, 0, 1000, config)
    assert max(len(e.source) for e in examples) <= 75 and max(len(e.target) for e in examples) <= 188
    assert MultistepConfig(max_depth=2).longest_source == 51  # 2 x 14 + (2 + 3 x 7)
    # depth 5: start 2 + 3 x 63 = 191, 2 + 2 x 190 = 382, 2 + 2 x 381 = 764: fits; depth 6: 383, 766, 1532: not
    assert MultistepConfig(max_depth=5).longest_target == 764
    with pytest.raises(ValueError, match=re.escape("max_depth 6 and steps 2 could give a target of 1532 tokens: with"
                                                   " a BOS, more than the transformer's 1024 positions")):
        MultistepConfig(max_depth=6)


@pytest.mark.parametrize("fields, message", [
    ({"steps": 1}, "steps must be an integer >= 2, not 1"),
    ({"steps": True}, "steps must be an integer >= 2, not True"),
    ({"tries": 0}, "tries must be an integer >= 1, not 0"),
    ({"max_depth": -1}, "max_depth must be a non-negative integer, not -1"),
    ({"rules": ("f x -> x",)}, "rules[0] 'f x -> x': the lhs is incomplete: 1 more argument(s) needed"),
])
def test_bad_configs_are_refused(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MultistepConfig(**fields)


def test_a_one_step_config_is_read_with_the_default_steps():
    one = RewriteConfig(max_depth=2, symbol_offset=40, vocab_size=600)
    assert as_multistep(one) == MultistepConfig(max_depth=2, symbol_offset=40, vocab_size=600)
    assert same(generate(5, 0, 30, one), generate(5, 0, 30, as_multistep(one)))
    assert same(split(5, 20, 10, one)[1], split(5, 20, 10, as_multistep(one))[1])
    with pytest.raises(ValueError, match=re.escape("max_depth 6 and steps 2 could give a target of 1532 tokens")):
        split(0, 1, 1, RewriteConfig(max_depth=6))


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match=re.escape("seed and counts must be non-negative integers, not (0, -1, 5)")):
        generate(0, -1, 5)
    with pytest.raises(ValueError, match=re.escape("unknown stream 'valid': use one of ('train', 'test')")):
        generate(0, 0, 5, stream="valid")


def test_columns_make_a_pyarrow_table():
    examples = generate(0, 0, 20)
    table = pa.table(columns(examples))
    assert table.column("task").to_pylist() == ["rewrite_multistep"] * 20
    assert table.column("source_length").to_pylist() == [len(e.source) for e in examples]
    assert table.column("target").to_pylist()[3] == examples[3].target.tolist()
    assert decode(encode("h x : n x , n x : g x x | h a")) == "h x : n x , n x : g x x | h a"
