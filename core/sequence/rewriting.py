"""One-step term rewriting with a fixed rule set: a small downstream task for a transformer pretrained on LIME.

Terms are written in prefix (Polish) notation, so no brackets are needed: `f h a g b c` is f(h(a), g(b, c)). An
example draws one rule `lhs -> rhs` uniformly and a ground term for each variable of its lhs (the same variable gets
the same term everywhere); the source is the rule written out with its variables, then the instance of the lhs
(`lhs : rhs | term`), and the target is the instance of the rhs, the term rewritten once at its root. Because
substitution in prefix notation replaces each variable token by its term's tokens, both are built token by token.

The tokens are LIME's: ids 0..6 are its special tokens and vocabulary symbol s is token N_SPECIAL + s. Unlike LIME,
whose examples each draw their own symbols, the named symbols here sit at fixed vocabulary positions,
symbol_offset + SYMBOLS[name], the same in every example. Sequences hold no BOS/EOS/PAD (the model's collator adds
them), and `core.sequence.lime.columns` reads these examples as it reads LIME's.

Example i of the stream (seed, stream) is drawn from its own generator, default_rng([seed, stream number, i]), so it
is the same however the data is split into calls, and the first n training examples are the same for any n_train.
The generator's parts (Uniforms, pick, random_term, stream_number, check_counts, split_streams) are public for
core.sequence.multistep, which chains these rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, TypeVar

import numpy as np

from core.sequence.lime import MAPS, N_SPECIAL, SEP, SPECIAL_NAMES

T = TypeVar("T")  # what `pick` picks from

BINARY, UNARY = ("f", "g", "k"), ("h", "n")
CONSTANTS = ("a", "b", "c", "d", "e", "0", "1")
VARIABLES = ("x", "y", "z")  # pattern variables: they occur in rules, never in a generated term
SYMBOLS: dict[str, int] = {name: k for k, name in enumerate(BINARY + UNARY + CONSTANTS + VARIABLES)}
ARITY: dict[str, int] = {**{name: 2 for name in BINARY}, **{name: 1 for name in UNARY},
                         **{name: 0 for name in CONSTANTS + VARIABLES}}
RULES = ("f x 0 -> x", "g x y -> g y x", "f x g y z -> g f x y f x z", "h h x -> x", "f f x y z -> f x f y z",
         "h f x y -> f h y h x", "k x y -> f y g x x", "n g x y -> g n x n y")
STREAMS = ("train", "test")  # the stream's position here is its part of every example's seed
# A node with depth left is a constant with probability 1/3, a unary operator with 1/6 and a binary one with 1/2
# (expected branching 7/6 > 1: most terms reach max_depth, so the depth bound matters); with none left, a constant.
P_CONSTANT, P_UNARY = 1 / 3, 1 / 6
BLOCK = 64  # uniforms drawn at once: one per node, the rule's included (3 variables of depth 3 need 46)


@dataclass(frozen=True)
class Rule:
    """A parsed rule: its sides as symbol names, and the lhs's variables in the order they first occur."""

    text: str
    lhs: tuple[str, ...]
    rhs: tuple[str, ...]
    variables: tuple[str, ...]


def _check_term(names: list[str], where: str) -> None:
    """Raise unless the names are one well-formed prefix term."""
    if not names:
        raise ValueError(f"{where} is empty")
    open_slots = 1  # arguments still to read
    for at, name in enumerate(names):
        if open_slots == 0:
            raise ValueError(f"{where} has tokens after a complete term: {' '.join(names[at:])!r}")
        open_slots += ARITY[name] - 1
    if open_slots:
        raise ValueError(f"{where} is incomplete: {open_slots} more argument(s) needed")


def parse_rule(text: str, where: str = "rule") -> Rule:
    """`lhs -> rhs` as a Rule; `where` names it in the errors."""
    sides = text.split("->")
    if len(sides) != 2:
        raise ValueError(f"{where} {text!r} is not of the form 'lhs -> rhs'")
    lhs, rhs = (side.split() for side in sides)
    for name in lhs + rhs:
        if name not in SYMBOLS:
            raise ValueError(f"{where} {text!r}: unknown symbol {name!r} (use one of {' '.join(SYMBOLS)})")
    _check_term(lhs, f"{where} {text!r}: the lhs")
    _check_term(rhs, f"{where} {text!r}: the rhs")
    if ARITY[lhs[0]] == 0:  # a bare variable would match anything, a constant only itself: no rewriting to learn
        raise ValueError(f"{where} {text!r}: the lhs must start with an operator, not {lhs[0]!r}")
    variables = tuple(dict.fromkeys(name for name in lhs if name in VARIABLES))
    missing = [name for name in dict.fromkeys(rhs) if name in VARIABLES and name not in variables]
    if missing:
        raise ValueError(f"{where} {text!r}: rhs variable(s) {' '.join(missing)} do not occur in the lhs")
    return Rule(text, tuple(lhs), tuple(rhs), variables)


@lru_cache(maxsize=None)
def parse_rules(rules: tuple[str, ...]) -> tuple[Rule, ...]:
    """Every rule parsed, once per rule set; errors name the config field and the rule's index."""
    if not rules or not all(isinstance(text, str) for text in rules):
        raise ValueError(f"rules must be a non-empty tuple of 'lhs -> rhs' strings, not {rules!r}")
    return tuple(parse_rule(text, f"rules[{i}]") for i, text in enumerate(rules))


DEFAULT_RULES = parse_rules(RULES)  # checked at import


@dataclass(frozen=True)
class RewriteConfig:
    """The rule set, the substituted terms' depth bound and where the named symbols sit in LIME's vocabulary."""

    rules: tuple[str, ...] = RULES
    max_depth: int = 3
    symbol_offset: int = 0
    vocab_size: int = 1000

    def __post_init__(self):
        for name in ("max_depth", "symbol_offset", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
        if self.symbol_offset + len(SYMBOLS) > self.vocab_size:
            raise ValueError(f"symbol_offset {self.symbol_offset} is too large: the {len(SYMBOLS)} named symbols"
                             f" need symbol_offset + {len(SYMBOLS)} <= vocab_size = {self.vocab_size}")
        if not isinstance(self.rules, tuple):  # a tuple keeps the config hashable and its rules parsed once
            raise ValueError(f"rules must be a non-empty tuple of 'lhs -> rhs' strings, not {self.rules!r}")
        parse_rules(self.rules)

    @property
    def total_vocab(self) -> int:
        """Token ids run from 0 to total_vocab - 1, as LIME's with the same vocab_size."""
        return N_SPECIAL + self.vocab_size


@dataclass(frozen=True, eq=False)
class RewriteExample:
    """One example, sequences in token ids (int32): the rule's index, each variable's term, the lhs's instance."""

    task: str  # always "rewrite", for core.sequence.lime.columns
    rule: int
    bindings: dict[str, np.ndarray] = field(repr=False)  # variable -> its term, in the order they occur in the lhs
    term: np.ndarray = field(repr=False)
    source: np.ndarray = field(repr=False)  # lhs : rhs | term
    target: np.ndarray = field(repr=False)  # rhs with the bindings substituted


def token(name: str, config: RewriteConfig = RewriteConfig()) -> int:
    """The token id of a named symbol."""
    return N_SPECIAL + config.symbol_offset + SYMBOLS[name]


def encode(text: str, config: RewriteConfig = RewriteConfig()) -> np.ndarray:
    """Space-separated names (special tokens as `decode` writes them) as tokens."""
    specials = {name: t for t, name in enumerate(SPECIAL_NAMES)}
    return np.asarray([specials[w] if w in specials else token(w, config) for w in text.split()], np.int32)


def decode(tokens: np.ndarray, config: RewriteConfig = RewriteConfig()) -> str:
    """Tokens as names: `f h a g b c`, special tokens as LIME writes them (SEP `|`, MAPS `:`), others s<index>."""
    names = dict(enumerate(SPECIAL_NAMES)) | {token(name, config): name for name in SYMBOLS}
    return " ".join(names.get(t, f"s{t - N_SPECIAL}") for t in np.asarray(tokens).tolist())


class Uniforms:
    """An example's uniforms, read one at a time and drawn from its generator BLOCK at a time."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.buffer, self.at = rng, [], 0

    def __call__(self) -> float:
        if self.at == len(self.buffer):
            self.buffer, self.at = self.rng.random(BLOCK).tolist(), 0
        self.at += 1
        return self.buffer[self.at - 1]


def pick(u: float, low: float, width: float, names: tuple[T, ...]) -> T:
    """The name (or any item) a uniform in [low, low + width) picks, uniformly (clipped against rounding at the top)."""
    return names[min(int((u - low) / width * len(names)), len(names) - 1)]


def random_term(draw: Uniforms, depth: int) -> list[str]:
    """A random ground term of depth <= depth, as names in prefix order (one uniform per node)."""
    u = draw()
    if depth == 0:
        return [pick(u, 0.0, 1.0, CONSTANTS)]
    if u < P_CONSTANT:
        return [pick(u, 0.0, P_CONSTANT, CONSTANTS)]
    if u < P_CONSTANT + P_UNARY:
        return [pick(u, P_CONSTANT, P_UNARY, UNARY)] + random_term(draw, depth - 1)
    name = pick(u, P_CONSTANT + P_UNARY, 1 - P_CONSTANT - P_UNARY, BINARY)
    return [name] + random_term(draw, depth - 1) + random_term(draw, depth - 1)


def stream_number(stream: str) -> int:
    """A stream's number in the seed."""
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}: use one of {STREAMS}")
    return STREAMS.index(stream)


def _example(seed: int, stream: int, index: int, rules: tuple[Rule, ...], config: RewriteConfig) -> RewriteExample:
    """Example `index` of the stream, from its own generator."""
    draw = Uniforms(np.random.default_rng([seed, stream, index]))
    number = min(int(draw() * len(rules)), len(rules) - 1)
    rule, ids = rules[number], {name: token(name, config) for name in SYMBOLS}
    bindings = {v: [ids[name] for name in random_term(draw, config.max_depth)] for v in rule.variables}
    lhs, rhs = [ids[name] for name in rule.lhs], [ids[name] for name in rule.rhs]
    term = [t for name in rule.lhs for t in bindings.get(name, (ids[name],))]
    target = [t for name in rule.rhs for t in bindings.get(name, (ids[name],))]
    as_array = lambda tokens: np.asarray(tokens, np.int32)  # noqa: E731
    return RewriteExample("rewrite", number, {v: as_array(b) for v, b in bindings.items()}, as_array(term),
                          as_array(lhs + [MAPS] + rhs + [SEP] + term), as_array(target))


def check_counts(seed: int, *counts: int) -> None:
    """Raise unless the seed and counts are non-negative integers."""
    if any(not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0 for n in (seed, *counts)):
        raise ValueError(f"seed and counts must be non-negative integers, not {(seed, *counts)}")


def generate(seed: int, start: int, count: int, config: RewriteConfig = RewriteConfig(),
             stream: str = "train") -> list[RewriteExample]:
    """Examples start..start+count-1 of the stream (seed, stream)."""
    check_counts(seed, start, count)
    rules, number = parse_rules(config.rules), stream_number(stream)
    return [_example(seed, number, i, rules, config) for i in range(start, start + count)]


def split(seed: int, n_train: int, n_test: int, config: RewriteConfig = RewriteConfig(),
          max_draws: int | None = None) -> tuple[list[RewriteExample], list[RewriteExample]]:
    """(train, test): train is examples 0..n_train-1 of (seed, "train"), so a smaller n_train's set is a prefix of a
    larger one's; test is the first n_test examples of (seed, "test") whose sources are new, neither in train nor
    earlier in test (so it depends on n_train). Gives up after max_draws test draws (default 1000 + 10 n_test)."""
    check_counts(seed, n_train, n_test)
    rules = parse_rules(config.rules)
    return split_streams(lambda stream, index: _example(seed, stream, index, rules, config), n_train, n_test, max_draws)


def split_streams(example: Callable[[int, int], Any], n_train: int, n_test: int,
                  max_draws: int | None = None) -> tuple[list, list]:
    """`split` for any task whose example(stream number, index) has a `source`: shared by the rewriting tasks."""
    train = [example(stream_number("train"), index) for index in range(n_train)]
    seen, test = {e.source.tobytes() for e in train}, []
    draws = 1000 + 10 * n_test if max_draws is None else max_draws
    for index in range(draws):
        if len(test) == n_test:
            break
        drawn = example(stream_number("test"), index)
        if drawn.source.tobytes() not in seen:
            seen.add(drawn.source.tobytes())
            test.append(drawn)
    if len(test) < n_test:
        raise ValueError(f"found only {len(test)} of n_test={n_test} test examples with sources new to the training"
                         f" set and to each other in {draws} draws: too few distinct examples for this split")
    return train, test
