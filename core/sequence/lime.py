"""LIME (Wu, Rabe, Li, Ba, Grosse & Szegedy, ICML 2021): synthetic Deduct, Abduct and Induct tasks for pretraining.

Each example draws its own 24 rule, 24 lower-case and 20 math symbols from a shared vocabulary, keeps 3..5 of the
rule symbols, and builds a Rule (2 x kept draws of the kept rule symbols and 5..19 of the math ones, with
replacement, shuffled), a Case (each rule symbol that occurs in the Rule -> 2..8 lower-case or math symbols) and the
Result (the Rule with its rule symbols substituted). A kept symbol need not occur in the Rule: the draws are with
replacement, as specified, and the Case maps only the symbols that occur, in the order they first occur.
Deduct is Rule + Case -> Result, Abduct Rule + Result -> Case, Induct Result + Case -> Rule; every source starts
with a header declaring that example's rule, lower-case and math symbols. As in the authors' generator
(tonywu95/LIME, reason/generate_data.py) the header lists by default only the rule symbols the Rule uses, in the
order the Case maps them (they write both from one list); header="all" lists all the rule symbols drawn, sorted (the
earlier header: 71 tokens at the paper's sizes instead of 48 to 52). Both list the whole lower-case and math sets,
sorted (a set's order carries nothing), and the draws do not depend on the header: only the sources differ.

Example i takes a fixed number of uniforms from its own block of the counter-based Philox stream keyed by the seed
(counter = i x block): it reads the same however the dataset is sharded, and a shard's draws come from one call and
become symbols together, as arrays; only the final assembly is per example. Mixed, copy and reverse example i are
Deduct, Abduct or Induct example i of the same seed, by its drawn task. The controls keep Mixed's sources token for
token (source lengths as Mixed's) and copy or reverse the whole source: their targets are as long as the sources,
not as Mixed's targets, which only a copy of a part the source does not mark could match. Sequences hold no
BOS/EOS: PAD, BOS and EOS are reserved for the model's collator to add.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

PAD, BOS, EOS, SEP, SET, MAPS, ENTRY = range(7)  # SEP between a source's parts, SET between the header's sets
SPECIAL_NAMES = ("<pad>", "<bos>", "<eos>", "|", ";", ":", ",")
N_SPECIAL = len(SPECIAL_NAMES)  # symbol s of the vocabulary is token N_SPECIAL + s
TASKS = ("deduct", "abduct", "induct")
CONTROLS = ("copy", "reverse")  # a Mixed example's source, its target the source copied or reversed
CHUNK = 4096  # examples drawn at once
GLYPHS = {"rule": "ABCDEFGHIJKLMNOPQRSTUVWX", "lower": "abcdefghijklmnopqrstuvwx", "math": "+-*/=<>^()[]{}!~&%$#"}
HEADERS = ("used", "all")  # the header's rule symbols: those the Rule uses (the authors'), or every one drawn


@dataclass(frozen=True)
class LimeConfig:
    """The vocabulary and the draws' sizes; ranges are inclusive (low, high). Defaults are the paper's."""

    vocab_size: int = 1000
    rule_symbols: int = 24
    lower_symbols: int = 24
    math_symbols: int = 20
    kept_rule: tuple[int, int] = (3, 5)
    rule_math: tuple[int, int] = (5, 19)
    case_length: tuple[int, int] = (2, 8)
    header: Literal["used", "all"] = "used"

    def __post_init__(self):
        sets = self.rule_symbols + self.lower_symbols + self.math_symbols
        if self.header not in HEADERS:
            raise ValueError(f"header must be one of {HEADERS}, not {self.header!r}")
        if min(self.rule_symbols, self.lower_symbols, self.math_symbols) < 1:
            raise ValueError("rule_symbols, lower_symbols and math_symbols must each be at least 1")
        if self.vocab_size < sets:
            raise ValueError(f"vocab_size {self.vocab_size} is too small: each example draws {sets} distinct symbols"
                             f" ({self.rule_symbols} rule + {self.lower_symbols} lower + {self.math_symbols} math)")
        for name, floor, ceiling in (("kept_rule", 1, self.rule_symbols), ("rule_math", 0, None),
                                     ("case_length", 1, None)):
            low, high = getattr(self, name)
            if not floor <= low <= high or (ceiling is not None and high > ceiling):
                raise ValueError(f"{name} must be (low, high) with {floor} <= low <= high"
                                 f"{'' if ceiling is None else f' <= {ceiling}'}, not {(low, high)}")

    @property
    def set_sizes(self) -> tuple[int, int, int]:
        """How many rule, lower-case and math symbols each example draws."""
        return self.rule_symbols, self.lower_symbols, self.math_symbols

    @property
    def longest_header(self) -> int:
        """The most tokens a header can hold: its rule symbols, the lower-case and math sets, three separators."""
        rules = self.kept_rule[1] if self.header == "used" else self.rule_symbols
        return rules + self.lower_symbols + self.math_symbols + 3

    @property
    def longest_source(self) -> int:
        """The most tokens a source can hold (a control's target is as long): the header, then the longest pair
        of Rule, Case and Result with a separator."""
        kept, case, math = self.kept_rule[1], self.case_length[1], self.rule_math[1]
        rule, result = 2 * kept + math, 2 * kept * case + math  # every rule-symbol draw replaced by a longest string
        case_tokens = kept * (case + 2) + kept - 1  # `symbol : string` per symbol, `,` between
        longest_pair = max(rule + case_tokens, rule + result, result + case_tokens)
        return self.longest_header + longest_pair + 1

    @property
    def total_vocab(self) -> int:
        """Token ids run from 0 to total_vocab - 1: the special tokens, then the symbols."""
        return N_SPECIAL + self.vocab_size


@dataclass(frozen=True, eq=False)
class Example:
    """One example, every field in token ids (int32); `task` is the one drawn for Mixed, or a control's name."""

    task: str
    rule_set: np.ndarray  # every rule symbol drawn, sorted (as header="all" lists them)
    lower_set: np.ndarray
    math_set: np.ndarray
    kept: np.ndarray  # the rule symbols the Rule was drawn from
    rule: np.ndarray
    case: dict[int, np.ndarray]  # rule symbol -> its string, in the order the symbols first occur in the Rule
    result: np.ndarray
    source: np.ndarray
    target: np.ndarray


def substitute(rule: np.ndarray, case: dict[int, np.ndarray]) -> np.ndarray:
    """The Rule with every symbol the Case maps replaced by its string."""
    case = {int(symbol): np.asarray(string).tolist() for symbol, string in case.items()}
    return np.asarray(_substituted(np.asarray(rule).tolist(), case), np.int32)


def _substituted(rule: list[int], case: dict[int, list[int]]) -> list[int]:
    """`substitute` on lists."""
    return [token for symbol in rule for token in case.get(symbol, (symbol,))]


def encode_case(case: dict[int, np.ndarray]) -> np.ndarray:
    """`symbol : string , symbol : string ...` as tokens."""
    tokens = []
    for symbol, string in case.items():
        tokens += [ENTRY, int(symbol), MAPS, *np.asarray(string).tolist()]
    return np.asarray(tokens[1:], np.int32)  # no ENTRY before the first entry


def parse_case(tokens: np.ndarray) -> dict[int, np.ndarray]:
    """The Case that `encode_case` wrote, back from its tokens."""
    tokens, case = np.asarray(tokens).tolist(), {}
    while tokens:
        end = tokens.index(ENTRY) if ENTRY in tokens else len(tokens)
        entry, tokens = tokens[:end], tokens[end + 1:]
        if len(entry) < 2 or entry[1] != MAPS or entry[0] in case:
            raise ValueError(f"not a Case entry (symbol : string, each symbol once): {entry}")
        case[entry[0]] = np.asarray(entry[2:], np.int32)
    return case


def _uniforms(seed: int, start: int, count: int, width: int) -> np.ndarray:
    """`[count, width]` uniforms in [0, 1): row r is Philox(key=seed)'s outputs (start + r) * width onward, a function
    of (seed, example index) alone. Philox's raw stream is fixed across numpy versions, and so is this transform."""
    bits = np.random.Philox(key=seed, counter=start * width // 4).random_raw(count * width)  # 4 outputs per counter
    return ((bits >> np.uint64(11)) * 2.0 ** -53).reshape(count, width)


def _integers(u: np.ndarray, low: int, high: int) -> np.ndarray:
    """Uniform integers low..high (inclusive) from uniforms (53-bit: any bias is below 2**-40 here)."""
    return low + (u * (high - low + 1)).astype(np.int64)


def _distinct(u: np.ndarray, n: int) -> np.ndarray:
    """Per row, u.shape[1] distinct integers of 0..n-1, a uniform subset (Floyd's algorithm, all rows at once)."""
    chosen = np.empty(u.shape, np.int64)
    for step, top in enumerate(range(n - u.shape[1], n)):
        pick = (u[:, step] * (top + 1)).astype(np.int64)
        chosen[:, step] = np.where((chosen[:, :step] == pick[:, None]).any(1), top, pick)
    return chosen


def _draws(seed: int, start: int, count: int, config: LimeConfig) -> dict[str, np.ndarray]:
    """Every random choice of examples start..start+count-1, as arrays with one row per example."""
    n_sets, rule_max = sum(config.set_sizes), 2 * config.kept_rule[1] + config.rule_math[1]
    widths = {"pick": n_sets, "order": n_sets, "kept": 1, "math": 1, "body": rule_max, "shuffle": rule_max,
              "length": config.kept_rule[1], "string": config.kept_rule[1] * config.case_length[1], "task": 1}
    width = -(-sum(widths.values()) // 4) * 4  # whole Philox blocks, so that rows start on a counter
    u, at, draws = _uniforms(seed, start, count, width), 0, {}
    for name, size in widths.items():
        draws[name], at = u[:, at:at + size], at + size
    symbols = (_distinct(draws["pick"], config.vocab_size) + N_SPECIAL).astype(np.int32)
    symbols = np.take_along_axis(symbols, np.argsort(draws["order"], 1), 1)  # a random order: roles by position
    kept, n_math = _integers(draws["kept"], *config.kept_rule), _integers(draws["math"], *config.rule_math)
    slot, rows = np.arange(rule_max), np.arange(count)[:, None]
    from_kept = symbols[rows, (draws["body"] * kept).astype(np.int64)]  # the kept rule symbols: the set's first
    math_start = config.rule_symbols + config.lower_symbols
    from_math = symbols[rows, math_start + (draws["body"] * config.math_symbols).astype(np.int64)]
    body = np.where(slot < 2 * kept, from_kept, from_math)
    shuffle = np.where(slot < 2 * kept + n_math, draws["shuffle"], 2.0)  # unused slots sort last
    pool = config.lower_symbols + config.math_symbols  # lower and math sit side by side after the rule set
    strings = symbols[rows, config.rule_symbols + (draws["string"] * pool).astype(np.int64)]
    sets = [np.sort(part, 1) for part in np.split(symbols, np.cumsum(config.set_sizes[:2]), axis=1)]
    gap, end = np.full((count, 1), SET), np.full((count, 1), SEP)
    header_tail = np.concatenate([gap, sets[1], gap, sets[2], end], 1)  # what follows the header's rule symbols
    return {"symbols": symbols, "rule_set": sets[0].astype(np.int32), "header_tail": header_tail.astype(np.int32),
            "kept": kept[:, 0], "rule": np.take_along_axis(body, np.argsort(shuffle, 1), 1),
            "rule_length": (2 * kept + n_math)[:, 0],
            "case_length": _integers(draws["length"], *config.case_length),
            "strings": strings.reshape(count, config.kept_rule[1], config.case_length[1]),
            "task": _integers(draws["task"][:, 0], 0, len(TASKS) - 1)}


def _header(config: LimeConfig, rule_set: np.ndarray, case: dict[int, list[int]], tail: np.ndarray) -> list[int]:
    """The source's header: the Case's rule symbols in its order (header="used") or all of them sorted, then `tail`."""
    return (list(case) if config.header == "used" else rule_set.tolist()) + tail.tolist()


def _example(kind: str, draws: dict[str, np.ndarray], row: int, config: LimeConfig) -> Example:
    """The example of one row of draws, assembled on lists (faster than numpy at these sizes)."""
    symbols, kept = draws["symbols"][row], draws["kept"][row]
    rule_set, tail, lowers = draws["rule_set"][row], draws["header_tail"][row], config.lower_symbols
    lower_set, math_set = tail[1:lowers + 1], tail[lowers + 2:-1]
    rule, slots = draws["rule"][row, :draws["rule_length"][row]].tolist(), symbols[:kept].tolist()
    case = {}
    for token in rule:  # each rule symbol the Rule uses, in the order of its first occurrence
        if token in slots and token not in case:
            slot = slots.index(token)
            case[token] = draws["strings"][row, slot, :draws["case_length"][row, slot]].tolist()
    result, case_tokens = _substituted(rule, case), encode_case(case).tolist()
    task = TASKS[draws["task"][row]] if kind in ("mixed", *CONTROLS) else kind  # Mixed and controls share the rest
    parts = {"deduct": (rule, case_tokens, result), "abduct": (rule, result, case_tokens),
             "induct": (result, case_tokens, rule)}[task]
    source = _header(config, rule_set, case, tail) + parts[0] + [SEP] + parts[1]
    target = {"copy": source, "reverse": source[::-1]}.get(kind, parts[2])
    as_array = lambda tokens: np.asarray(tokens, np.int32)  # noqa: E731
    return Example(kind if kind in CONTROLS else task, rule_set, lower_set, math_set, as_array(sorted(slots)),
                   as_array(rule), {symbol: as_array(string) for symbol, string in case.items()}, as_array(result),
                   as_array(source), as_array(target))


def generate(task: str, seed: int, start: int, count: int, config: LimeConfig = LimeConfig()) -> list[Example]:
    """Examples start..start+count-1 of the dataset (task, seed); task is one of TASKS, "mixed" or a CONTROL."""
    if task not in (*TASKS, "mixed", *CONTROLS):
        raise ValueError(f"unknown task {task!r}: use one of {(*TASKS, 'mixed', *CONTROLS)}")
    if min(seed, start, count) < 0 or seed >= 2 ** 128:
        raise ValueError(f"seed (a Philox key: below 2**128), start and count must be non-negative integers, not"
                         f" {(seed, start, count)}")
    examples = []
    for first in range(start, start + count, CHUNK):  # bounded memory for any count
        draws = _draws(seed, first, min(CHUNK, start + count - first), config)
        examples += [_example(task, draws, row, config) for row in range(len(draws["kept"]))]
    return examples


def columns(examples: list[Example]) -> dict[str, list]:
    """{task, source, target, source_length, target_length}: one list per column, ready for pyarrow."""
    return {"task": [e.task for e in examples], "source": [e.source for e in examples],
            "target": [e.target for e in examples], "source_length": [len(e.source) for e in examples],
            "target_length": [len(e.target) for e in examples]}


def decode(tokens: np.ndarray, example: Example | None = None) -> str:
    """Tokens as words: special tokens by name; with the example, its symbols as A.. (rule), a.. (lower-case) and
    + - * .. (math) where its sets are small enough, else every symbol as s<number in the vocabulary>."""
    names = {token: name for token, name in enumerate(SPECIAL_NAMES)}
    if example is not None:
        for kind, symbols in (("rule", example.rule_set), ("lower", example.lower_set), ("math", example.math_set)):
            if len(symbols) <= len(GLYPHS[kind]):
                names.update(zip(symbols.tolist(), GLYPHS[kind]))
    return " ".join(names.get(t, f"s{t - N_SPECIAL}") for t in np.asarray(tokens).tolist())
