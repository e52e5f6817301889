"""LIME's synthetic tasks (Wu et al. 2021): every example checked against a reference parse of its own tokens (the
Result is the Case substituted into the Rule, whichever part is the target), the stated sizes and ranges, the header
(the rule symbols used, as the authors', or all of them: the same examples either way, read back from the tokens alone;
lengths by hand), seeding independent of the sharding, Mixed's task proportions, the copy and reverse controls, and
refused configs."""
import hashlib
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from core.sequence.lime import (CHUNK, ENTRY, HEADERS, MAPS, N_SPECIAL, SEP, SET, TASKS, LimeConfig, columns, decode,
                                encode_case, generate, parse_case, substitute)

ALL = LimeConfig(header="all")  # the paper's sizes, every rule symbol in the header (71 tokens)


def reference_case(tokens) -> dict[int, list[int]]:
    """A Case from its tokens, parsed here independently of core.sequence.lime: `symbol : string` split on ','."""
    case, entry = {}, []
    for token in list(tokens) + [ENTRY]:
        if token != ENTRY:
            entry.append(int(token))
            continue
        assert len(entry) >= 3 and entry[1] == MAPS and entry[0] not in case, entry
        case[entry[0]], entry = entry[2:], []
    return case


def reference_substitute(rule, case: dict[int, list[int]]) -> list[int]:
    """The Rule with each mapped symbol replaced by its string, written out as a loop."""
    out = []
    for symbol in rule:
        out.extend(case[int(symbol)] if int(symbol) in case else [int(symbol)])
    return out


def parts(source) -> tuple[list[int], list[int], list[int]]:
    """(header, first part, second part) of a source: the header ends at the first SEP, the first part at the next."""
    tokens = [int(t) for t in source]
    end = tokens.index(SEP) + 1
    body = tokens[end:]
    cut = body.index(SEP)
    assert SEP not in body[cut + 1:]
    return tokens[:end], body[:cut], body[cut + 1:]


def header_sets(header: list[int]) -> tuple[list[int], list[int], list[int]]:
    """The rule, lower-case and math symbols a header lists, split on its two SETs."""
    first, second = header.index(SET), len(header) - 1 - header[::-1].index(SET)
    assert header.count(SET) == 2 and header[-1] == SEP
    return header[:first], header[first + 1:second], header[second + 1:-1]


def read_example(source, target, task: str) -> tuple[list[int], list[int], dict[int, list[int]], list[int]]:
    """(rule symbols the header lists, Rule, Case, Result) of an example, read from its tokens alone."""
    header, first, second = parts(source)
    target = [int(t) for t in target]
    if task == "deduct":  # Rule + Case -> Result
        rule, case, result = first, reference_case(second), target
    elif task == "abduct":  # Rule + Result -> Case
        rule, case, result = first, reference_case(target), second
    else:  # Result + Case -> Rule
        rule, case, result = target, reference_case(second), first
    return header_sets(header)[0], rule, case, result


def same(a: list, b: list) -> bool:
    """Two lists of examples alike in every field."""
    return len(a) == len(b) and all(
        x.task == y.task and all(np.array_equal(getattr(x, f), getattr(y, f))
                                 for f in ("rule_set", "lower_set", "math_set", "kept", "rule", "result", "source",
                                           "target"))
        and list(x.case) == list(y.case) and all(np.array_equal(x.case[k], y.case[k]) for k in x.case)
        for x, y in zip(a, b))


@pytest.mark.parametrize("task", [*TASKS, "mixed"])
@pytest.mark.parametrize("header", HEADERS)
def test_the_result_is_the_case_substituted_into_the_rule_read_back_from_the_tokens(task, header):
    examples = generate(task, 11, 0, 300, LimeConfig(header=header))
    assert {e.task for e in examples} == ({task} if task in TASKS else set(TASKS))
    for e in examples:
        _, rule, case, result = read_example(e.source, e.target, e.task)
        assert reference_substitute(rule, case) == result
        # the tokens are the example's fields, and the module's helpers agree with the references
        assert rule == e.rule.tolist() and result == e.result.tolist()
        assert case == {k: v.tolist() for k, v in e.case.items()}
        assert substitute(e.rule, e.case).tolist() == result
        assert {k: v.tolist() for k, v in parse_case(encode_case(e.case)).items()} == case
        # the Case maps exactly the rule symbols the Rule uses, in the order they first occur; none is left over
        assert list(case) == list(dict.fromkeys(t for t in rule if t in set(e.rule_set.tolist())))
        assert not set(result) & set(e.rule_set.tolist())


def test_each_task_has_its_part_as_target():
    deduct, abduct, induct = (generate(task, 5, 100, 50) for task in TASKS)
    for d, a, i in zip(deduct, abduct, induct):  # the same example i under each task
        assert np.array_equal(d.rule, i.rule) and np.array_equal(d.result, a.result)
        assert np.array_equal(i.target, i.rule)  # Induct's target is the Rule
        assert np.array_equal(d.target, d.result)
        recovered = reference_case(a.target)  # Abduct's target, a Case, reproduces the Result
        assert reference_substitute(a.rule, recovered) == a.result.tolist()
        assert np.array_equal(parts(a.source)[1], a.rule) and np.array_equal(parts(i.source)[1], i.result)


def test_sizes_ranges_and_sets_are_as_stated():
    config = LimeConfig()
    examples = generate("mixed", 2, 0, 600, config)
    kept_sizes, math_counts, case_lengths = set(), set(), set()
    for e in examples:
        rule_set, lower, math = (set(s.tolist()) for s in (e.rule_set, e.lower_set, e.math_set))
        assert (len(rule_set), len(lower), len(math)) == (24, 24, 20) and len(rule_set | lower | math) == 68
        kept = set(e.kept.tolist())
        assert 3 <= len(kept) <= 5 and len(kept) == len(e.kept) and kept <= rule_set
        rule = e.rule.tolist()
        from_kept = [t for t in rule if t in kept]
        assert len(from_kept) == 2 * len(kept)
        assert all(t in math for t in rule if t not in kept) and 5 <= len(rule) - len(from_kept) <= 19
        assert 11 <= len(rule) <= 29
        for string in e.case.values():
            assert 2 <= len(string) <= 8 and set(string.tolist()) <= lower | math
        for sequence in (e.source, e.target):
            assert sequence.dtype == np.int32 and SEP <= sequence.min() and sequence.max() < config.total_vocab
        kept_sizes.add(len(kept))
        math_counts.add(len(rule) - len(from_kept))
        case_lengths |= {len(s) for s in e.case.values()}
    # each range is reached at both ends: inclusive highs, no off-by-one
    assert kept_sizes == {3, 4, 5} and math_counts == set(range(5, 20)) and case_lengths == set(range(2, 9))


def test_a_vocabulary_of_exactly_68_symbols_is_used_whole_by_every_example():
    config = LimeConfig(vocab_size=68)
    for e in generate("deduct", 0, 0, 50, config):
        symbols = np.concatenate([e.rule_set, e.lower_set, e.math_set])
        assert sorted(symbols.tolist()) == list(range(N_SPECIAL, N_SPECIAL + 68))


@pytest.mark.parametrize("header", HEADERS)
def test_every_source_starts_with_its_own_header(header):
    for e in generate("mixed", 4, 0, 200, LimeConfig(header=header)):
        rules, lower, math = header_sets(parts(e.source)[0])
        assert lower == sorted(e.lower_set.tolist()) and math == sorted(e.math_set.tolist())
        # all: every rule symbol drawn, sorted; used: the Case's symbols in its order (the authors' generator)
        assert rules == (sorted(e.rule_set.tolist()) if header == "all" else list(e.case))
        assert set(e.rule.tolist()) <= set(rules + math)  # the sets declared are those the example uses
        assert set(e.result.tolist()) <= set(lower + math)
    sets = {tuple(e.rule_set.tolist()) for e in generate("mixed", 4, 0, 200)}
    assert len(sets) == 200  # each example draws its own


@pytest.mark.parametrize("sizes", [{}, {"rule_symbols": 8, "lower_symbols": 8, "math_symbols": 8}])
def test_the_used_header_reads_back_as_the_same_example_as_the_full_one(sizes):
    used, full = (generate("mixed", 9, 0, 600, LimeConfig(header=h, **sizes)) for h in HEADERS)
    for u, f in zip(used, full):
        assert u.task == f.task and np.array_equal(u.target, f.target)
        # the same draws: only the header's rule symbols differ
        for field in ("rule_set", "lower_set", "math_set", "kept", "rule", "result"):
            assert np.array_equal(getattr(u, field), getattr(f, field)), field
        listed_u, *read_u = read_example(u.source, u.target, u.task)
        listed_f, *read_f = read_example(f.source, f.target, f.task)
        assert read_u == read_f  # Rule, Case and Result, from the tokens alone
        assert parts(u.source)[1:] == parts(f.source)[1:] and header_sets(parts(u.source)[0])[1:] == \
            header_sets(parts(f.source)[0])[1:]
        # the exact invariant: the short header lists exactly the full header's symbols that the example uses, so
        # every token after the header is a rule symbol under one header if and only if it is under the other
        body = parts(u.source)[1] + parts(u.source)[2] + [int(t) for t in u.target]
        assert listed_u == [t for t in dict.fromkeys(body) if t in set(listed_f)] == list(read_u[1])
        assert len(f.source) - len(u.source) == len(listed_f) - len(listed_u) == len(f.rule_set) - len(u.case)


HAND = {"rule_symbols": 4, "lower_symbols": 3, "math_symbols": 2, "kept_rule": (1, 1), "rule_math": (0, 0),
        "case_length": (3, 3)}  # every example alike in length: Rule `r r`, Case `r : s s s`, Result 6 tokens
HAND_LENGTHS = {  # (source, target) by hand: header (rule symbols + 3 + 2 + 3 separators) + first | second part
    "all": {"deduct": (12 + 2 + 1 + 5, 6), "abduct": (12 + 2 + 1 + 6, 5), "induct": (12 + 6 + 1 + 5, 2)},
    "used": {"deduct": (9 + 2 + 1 + 5, 6), "abduct": (9 + 2 + 1 + 6, 5), "induct": (9 + 6 + 1 + 5, 2)},
}


@pytest.mark.parametrize("header", HEADERS)
@pytest.mark.parametrize("task", [*TASKS, "mixed"])
def test_lengths_per_task_are_the_hand_counted_ones(task, header):
    examples = generate(task, 2, 0, 300, LimeConfig(header=header, **HAND))
    sources, targets = np.array([len(e.source) for e in examples]), np.array([len(e.target) for e in examples])
    expected = np.array([HAND_LENGTHS[header][e.task] for e in examples])  # Mixed: each example's own task
    assert sources.tolist() == expected[:, 0].tolist() and targets.tolist() == expected[:, 1].tolist()
    hand = HAND_LENGTHS[header]
    if task == "mixed":  # mean over the drawn tasks; max: Induct's source (the longest), Deduct's target
        counts = {t: sum(e.task == t for e in examples) for t in TASKS}
        assert sources.mean() == pytest.approx(sum(counts[t] * hand[t][0] for t in TASKS) / 300)
        assert targets.mean() == pytest.approx(sum(counts[t] * hand[t][1] for t in TASKS) / 300)
        assert (sources.max(), targets.max()) == (hand["induct"][0], hand["deduct"][1])
    else:
        assert (sources.mean(), sources.max(), targets.mean(), targets.max()) == (*hand[task][:1] * 2,
                                                                                  *hand[task][1:] * 2)


def test_the_full_header_is_the_earlier_generators_data():
    digest = hashlib.sha256()
    for e in generate("mixed", 0, 0, 300, ALL):
        digest.update(e.task.encode() + e.source.tobytes() + b"|" + e.target.tobytes())
    assert digest.hexdigest()[:16] == "ff66810479560532"  # computed with the generator before issue 31


@pytest.mark.parametrize("task, header", [("mixed", "used"), ("abduct", "used"), ("reverse", "used"),
                                          ("mixed", "all")])
def test_generation_is_seeded_and_independent_of_the_sharding(task, header):
    config = LimeConfig(header=header)
    whole = generate(task, 3, 0, 600, config)
    assert same(whole, generate(task, 3, 0, 600, config))
    for sizes in ([7, 100, 493], [1] * 5 + [595], [300, 300]):
        shards, start = [], 0
        for size in sizes:
            shards += generate(task, 3, start, size, config)
            start += size
        assert same(whole, shards)
    across = generate(task, 3, CHUNK - 50, 100, config)  # one call across a chunk's edge, against two that stop at it
    assert same(across, generate(task, 3, CHUNK - 50, 50, config) + generate(task, 3, CHUNK, 50, config))
    other = generate(task, 4, 0, 600, config)
    assert sum(np.array_equal(a.source, b.source) for a, b in zip(whole, other)) == 0


def test_mixed_draws_each_task_a_third_of_the_time_as_that_tasks_example():
    n = 3000
    mixed = generate("mixed", 8, 0, n)
    counts = {task: sum(e.task == task for e in mixed) for task in TASKS}
    bound = 4 * np.sqrt(n / 3 * (2 / 3))  # 4 standard errors of a binomial count
    assert all(abs(count - n / 3) < bound for count in counts.values()), counts
    fixed = {task: generate(task, 8, 0, 60) for task in TASKS}
    assert all(same([e], [fixed[e.task][i]]) for i, e in enumerate(mixed[:60]))


def test_copy_and_reverse_keep_mixeds_sources():
    mixed, copy, reverse = (generate(task, 6, 0, 200) for task in ("mixed", "copy", "reverse"))
    for m, c, r in zip(mixed, copy, reverse):
        assert (c.task, r.task) == ("copy", "reverse")
        assert np.array_equal(c.source, m.source) and np.array_equal(r.source, m.source)
        assert np.array_equal(c.target, m.source) and np.array_equal(r.target, m.source[::-1])


def test_columns_make_a_pyarrow_table():
    examples = generate("mixed", 1, 10, 20)
    table = pa.table(columns(examples))
    assert table.num_rows == 20 and table.column_names == ["task", "source", "target", "source_length",
                                                          "target_length"]
    row = table.slice(3, 1).to_pylist()[0]
    assert row["task"] == examples[3].task and row["source"] == examples[3].source.tolist()
    assert row["source_length"] == len(examples[3].source) and row["target_length"] == len(examples[3].target)


def test_decode_names_specials_and_each_sets_symbols():
    assert decode([SEP, SET, MAPS, ENTRY, N_SPECIAL + 5]) == "| ; : , s5"
    e = generate("deduct", 0, 0, 1, ALL)[0]
    words, header = decode(e.source, e).split(), 24 + 24 + 20 + 3
    assert words[:header] == (list("ABCDEFGHIJKLMNOPQRSTUVWX") + [";"] + list("abcdefghijklmnopqrstuvwx") + [";"]
                              + list("+-*/=<>^()[]{}!~&%$#") + ["|"])
    assert decode(e.rule, e).split() == [words[header + i] for i in range(len(e.rule))]
    used = generate("deduct", 0, 0, 1)[0]  # the same example: its rule symbols keep their letters
    assert decode(used.source, used).split()[len(used.case):] == words[24:]


@pytest.mark.parametrize("fields, message", [
    ({"vocab_size": 67}, "vocab_size 67 is too small"),
    ({"rule_symbols": 0}, "at least 1"),
    ({"kept_rule": (4, 3)}, "kept_rule must be"),
    ({"kept_rule": (0, 3)}, "kept_rule must be"),
    ({"kept_rule": (3, 25)}, "<= 24"),
    ({"rule_math": (-1, 3)}, "rule_math must be"),
    ({"case_length": (0, 8)}, "case_length must be"),
    ({"header": "sorted"}, "header must be one of \\('used', 'all'\\), not 'sorted'"),
])
def test_bad_configs_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        LimeConfig(**fields)


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="unknown task 'deduction'"):
        generate("deduction", 0, 0, 1)
    with pytest.raises(ValueError, match="non-negative"):
        generate("mixed", -1, 0, 1)
    with pytest.raises(ValueError, match="2\\*\\*128"):
        generate("mixed", 2 ** 128, 0, 1)
    with pytest.raises(ValueError, match="not a Case entry"):
        parse_case([N_SPECIAL, N_SPECIAL + 1])
    assert generate("mixed", 0, 5, 0) == []


def test_longest_source_bounds_every_source_and_is_reached_by_the_worst_case():
    config = LimeConfig(rule_symbols=4, lower_symbols=3, math_symbols=2, kept_rule=(1, 1), rule_math=(0, 0),
                        case_length=(3, 3))
    # header 1 rule symbol used + 3 + 2 + 3 separators; Rule 2 tokens; Case `r : s s s`; Result 6: Induct's Result |
    # Case is longest; the full header lists all 4 rule symbols
    assert config.longest_source == 9 + 6 + 1 + 5
    assert replace(config, header="all").longest_source == 12 + 6 + 1 + 5
    for header in HEADERS:
        small = replace(config, header=header)
        assert max(len(e.source) for e in generate("mixed", 0, 0, 3000, small)) == small.longest_source
    paper = LimeConfig()
    longest = max(len(e.source) for e in generate("mixed", 0, 0, 3000, paper))
    assert longest <= paper.longest_source == 52 + 99 + 1 + 54  # at most 5 rule symbols; Induct's Result | Case
    assert ALL.longest_source == 71 + 99 + 1 + 54
