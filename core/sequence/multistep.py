"""Multi-step term rewriting: a chain of rules from rewriting.py's fixed set, the second downstream task for LIME.

An example draws a first rule uniformly and a ground term for each variable of its lhs, as core.sequence.rewriting
does: the lhs's instance is the starting term, and the rule rewrites it at its root. Each further rule is drawn
uniformly among the rules whose lhs matches the previous result at its root (first-order matching: a variable binds
the subterm it meets, a repeated variable must meet equal subterms) and whose result is a term the chain has not
visited (`g x y -> g y x` twice gives back the start: no second step), and rewrites it there; `steps` rules in all.
Where no rule can follow, the example draws a whole new chain, first rule and terms included, from its own generator,
at most `tries` times, then raises.

The source lists the rules in the order they apply, each `lhs : rhs`, with ENTRY between them as LIME's Case lists
its entries, then SEP and the starting term: `lhs1 : rhs1 , lhs2 : rhs2 | term`. The target is the final term alone
(as in the authors' hard variant): the terms between are left to the model. Tokens and symbols are rewriting.py's;
example i of (seed, stream) comes from default_rng([seed, stream number, i, SALT]), one word more than rewriting's,
so that it does not start as rewriting's example i does.

The authors' rewrite_multistep_hard (tonywu95/LIME, rewrite_multi/generate_data.py) rewrites strings: a start of
13..25 of the example's symbols, then 1..5 steps (uniform), each with a rule made up from the current string (a random
substring of 3..7 symbols, its lower-case letters made variables, and an rhs of 3..7 math symbols plus each variable
once), applied where the substring was cut, though the pattern may match elsewhere too; the source is a header of
the example's symbols, the rules and the start. Here the rules come from one fixed set and apply at the root, so each
target follows from its source, and there is no header (every example uses the same symbols). The step count is
fixed, 2 by default, not 1..5: one step is the "rewrite" task, and this rule set chains badly at the root beyond two
(after a result rooted in `g` only the swap applies, after `h f x y -> f h y h x` no rule does): with steps=3, 94% of
examples need a redraw, 16 tries on average, and only some 20 distinct chains occur.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from core.sequence.config import MAX_LENGTH
from core.sequence.lime import ENTRY, MAPS, SEP
from core.sequence.rewriting import (ARITY, STREAMS, VARIABLES, RewriteConfig, Rule, Uniforms, check_counts,
                                     parse_rules, pick, random_term, split_streams, stream_number, token)

TASK = "rewrite_multistep"
SALT = 1  # the seed's last word: this task's examples draw apart from rewriting's of the same (seed, stream, index)


def _full_tree(depth: int) -> int:
    """The most symbols a ground term of depth <= depth has (a full binary tree: no symbol has more arguments)."""
    return 2 ** (depth + 1) - 1


def _rewritten_bound(rule: Rule, size: int) -> int:
    """The most symbols rewriting a term of `size` symbols with the rule can give."""
    fixed_lhs = sum(name not in VARIABLES for name in rule.lhs)
    fixed_rhs = sum(name not in VARIABLES for name in rule.rhs)
    # the variables' terms hold size - fixed_lhs symbols; the rhs copies variable v's rhs/lhs occurrences times
    growth = [(rule.rhs.count(v) * (size - fixed_lhs)) // rule.lhs.count(v) for v in rule.variables]
    return fixed_rhs + max(growth, default=0)


@dataclass(frozen=True)
class MultistepConfig(RewriteConfig):
    """RewriteConfig's fields, the chain's length and how many chains an example may draw before giving up."""

    steps: int = 2
    tries: int = 100

    def __post_init__(self):
        super().__post_init__()
        for name, low in (("steps", 2), ("tries", 1)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, not {value!r}")
        for what, longest in (("source", self.longest_source), ("target", self.longest_target)):
            if longest + 1 > MAX_LENGTH:  # + 1: the BOS the decoder reads first (a source could get one too)
                raise ValueError(f"max_depth {self.max_depth} and steps {self.steps} could give a {what} of"
                                 f" {longest} tokens: with a BOS, more than the transformer's {MAX_LENGTH} positions"
                                 f" (core.sequence.config.MAX_LENGTH); lower max_depth or steps")

    @property
    def longest_start(self) -> int:
        """The most symbols a starting term can have: a first rule's lhs, each variable a full tree."""
        return max(sum(_full_tree(self.max_depth) if n in VARIABLES else 1 for n in r.lhs)
                   for r in parse_rules(self.rules))

    @property
    def longest_source(self) -> int:
        """An upper bound on a source's tokens: `steps` longest rules with their separators, then the longest start."""
        rule_tokens = max(len(r.lhs) + 1 + len(r.rhs) for r in parse_rules(self.rules))
        return self.steps * (rule_tokens + 1) + self.longest_start

    @property
    def longest_target(self) -> int:
        """An upper bound on a target's tokens: the longest start, rewritten `steps` times by the most growing rule."""
        size = self.longest_start
        for _ in range(self.steps):
            size = max(_rewritten_bound(r, size) for r in parse_rules(self.rules))
        return size


@dataclass(frozen=True, eq=False)
class MultistepExample:
    """One example, sequences in token ids (int32): the rules' indices in the order they apply and every term."""

    task: str  # always "rewrite_multistep", for core.sequence.lime.columns
    rules: tuple[int, ...]
    terms: tuple[np.ndarray, ...] = field(repr=False)  # the starting term, then each step's result (the last: target)
    source: np.ndarray = field(repr=False)  # lhs1 : rhs1 , lhs2 : rhs2 | term
    target: np.ndarray = field(repr=False)
    tries: int = 1  # the chain drawn last: 1 where the first chain drawn went through

    @property
    def term(self) -> np.ndarray:
        """The starting term, as RewriteExample names it."""
        return self.terms[0]


def subterm_end(names: list[str], start: int) -> int:
    """Where the subterm that begins at `start` of a prefix term ends (exclusive)."""
    open_slots, at = 1, start
    while open_slots:
        open_slots += ARITY[names[at]] - 1
        at += 1
    return at


def match(pattern: tuple[str, ...], term: list[str]) -> dict[str, list[str]] | None:
    """The bindings under which the pattern is the (ground) term, or None: a repeated variable must bind equal
    subterms. Both are well-formed prefix terms, so where each symbol agrees the two walks stay aligned."""
    bindings, at = {}, 0
    for name in pattern:
        if name in VARIABLES:
            end = subterm_end(term, at)
            if bindings.setdefault(name, term[at:end]) != term[at:end]:
                return None
            at = end
        elif term[at] != name:
            return None
        else:
            at += 1
    return bindings


def rewrite(rule: Rule, term: list[str]) -> list[str] | None:
    """The term rewritten once at its root by the rule, or None where its lhs does not match."""
    bindings = match(rule.lhs, term)
    return None if bindings is None else [t for name in rule.rhs for t in bindings.get(name, (name,))]


def encode_source(chain: list[Rule], start: list[str], config: RewriteConfig = RewriteConfig()) -> np.ndarray:
    """`lhs1 : rhs1 , lhs2 : rhs2 ... | start` as tokens."""
    tokens = []
    for rule in chain:
        tokens += [ENTRY] + [token(n, config) for n in rule.lhs] + [MAPS] + [token(n, config) for n in rule.rhs]
    return np.asarray(tokens[1:] + [SEP] + [token(n, config) for n in start], np.int32)  # no ENTRY before the first


def _chain(draw: Uniforms, rules: tuple[Rule, ...],
           config: MultistepConfig) -> tuple[list[int], list[list[str]]] | None:
    """One try: (the rules' indices, the terms from the start on), or None where no rule gives a new term."""
    first = pick(draw(), 0.0, 1.0, tuple(range(len(rules))))
    bindings = {v: random_term(draw, config.max_depth) for v in rules[first].variables}
    start = [t for name in rules[first].lhs for t in bindings.get(name, (name,))]
    chosen, terms = [first], [start, rewrite(rules[first], start)]
    if terms[1] == start:  # g x y -> g y x on g a a: a first step that changes nothing
        return None
    for _ in range(config.steps - 1):
        results = [(i, rewrite(rule, terms[-1])) for i, rule in enumerate(rules)]
        # a result the chain has visited would make the target reachable in fewer steps (g x y -> g y x twice)
        candidates = [(i, result) for i, result in results if result is not None and result not in terms]
        if not candidates:
            return None
        number, result = pick(draw(), 0.0, 1.0, tuple(candidates))
        chosen.append(number)
        terms.append(result)
    return chosen, terms


def as_multistep(config: RewriteConfig) -> MultistepConfig:
    """A RewriteConfig as a MultistepConfig with the default steps and tries (a MultistepConfig as it is)."""
    if isinstance(config, MultistepConfig):
        return config
    return MultistepConfig(**{f.name: getattr(config, f.name) for f in fields(RewriteConfig)})


def _example(seed: int, stream: int, index: int, config: MultistepConfig) -> MultistepExample:
    """Example `index` of the stream, from its own generator: the first chain of its draws that goes through."""
    rules, draw = parse_rules(config.rules), Uniforms(np.random.default_rng([seed, stream, index, SALT]))
    for tries in range(1, config.tries + 1):
        chain = _chain(draw, rules, config)
        if chain is not None:
            chosen, terms = chain
            as_tokens = [np.asarray([token(n, config) for n in term], np.int32) for term in terms]
            source = encode_source([rules[i] for i in chosen], terms[0], config)
            return MultistepExample(TASK, tuple(chosen), tuple(as_tokens), source, as_tokens[-1], tries)
    raise ValueError(f"example {index} of stream {STREAMS[stream]!r} (seed {seed}): no chain of {config.steps} rules,"
                     f" each matching the previous result at its root and giving a new term, in {config.tries} tries:"
                     f" these rules seldom apply to one another's results; use fewer steps, more tries or other rules")


def generate(seed: int, start: int, count: int, config: RewriteConfig = MultistepConfig(),
             stream: str = "train") -> list[MultistepExample]:
    """Examples start..start+count-1 of the stream (seed, stream); a RewriteConfig takes the default steps."""
    check_counts(seed, start, count)
    number, config = stream_number(stream), as_multistep(config)
    return [_example(seed, number, i, config) for i in range(start, start + count)]


def split(seed: int, n_train: int, n_test: int, config: RewriteConfig = MultistepConfig(),
          max_draws: int | None = None) -> tuple[list[MultistepExample], list[MultistepExample]]:
    """(train, test) as core.sequence.rewriting.split draws them: train is examples 0..n_train-1 of (seed, "train"),
    nested across n_train; test the first n_test of (seed, "test") with sources new to train and to each other."""
    check_counts(seed, n_train, n_test)
    config = as_multistep(config)
    return split_streams(lambda stream, index: _example(seed, stream, index, config), n_train, n_test, max_draws)
