"""An independent reference for the rewriting tasks' tests: prefix terms read into trees from token ids, first-order
matching and substitution on trees, written here without core.sequence.rewriting's own code."""
from core.sequence.lime import N_SPECIAL
from core.sequence.rewriting import SYMBOLS, RewriteConfig

ARITY = {"f": 2, "g": 2, "k": 2, "h": 1, "n": 1, **{name: 0 for name in "abcde01xyz"}}  # the task's, by hand
PATTERN_VARIABLES = set("xyz")


def names_of(tokens, config=RewriteConfig()) -> list[str]:
    """Symbol names of tokens (symbols only), at the config's symbol offset."""
    by_token = {N_SPECIAL + config.symbol_offset + k: name for name, k in SYMBOLS.items()}
    return [by_token[int(t)] for t in tokens]


def tree(names: list[str]) -> tuple:
    """A prefix term as a nested tuple (name, *arguments); all the names must be used."""
    def read(at: int) -> tuple[tuple, int]:
        name, arguments, at = names[at], [], at + 1
        for _ in range(ARITY[name]):
            argument, at = read(at)
            arguments.append(argument)
        return (name, *arguments), at

    parsed, end = read(0)
    assert end == len(names), names
    return parsed


def flatten(t: tuple) -> list[str]:
    """A tree back in prefix order."""
    return [t[0]] + [name for argument in t[1:] for name in flatten(argument)]


def substitution(pattern: tuple, term: tuple) -> dict | None:
    """The variables' subterms that make `pattern` the term, or None (a clash, or a repeated variable's mismatch)."""
    sigma = {}

    def matches(p: tuple, t: tuple) -> bool:
        if p[0] in PATTERN_VARIABLES:
            return sigma.setdefault(p[0], t) == t
        return p[0] == t[0] and all(matches(q, a) for q, a in zip(p[1:], t[1:]))

    return sigma if matches(pattern, term) else None


def apply(pattern: tuple, sigma: dict) -> tuple:
    """The pattern with its variables replaced."""
    if pattern[0] in PATTERN_VARIABLES:
        return sigma[pattern[0]]
    return (pattern[0], *(apply(p, sigma) for p in pattern[1:]))


def rewrite(lhs: tuple, rhs: tuple, term: tuple) -> tuple | None:
    """rhs under the substitution that makes lhs the term, or None."""
    sigma = substitution(lhs, term)
    return None if sigma is None else apply(rhs, sigma)
