"""The consent policy: the taxonomy of categories and purposes, and the rules over them.

A policy is TOML on disk and a JSON document in the log (`policy.published`);
`Policy.from_document` is the one place either is validated, and
`Policy.to_document` gives back a document that round-trips through it.

Decisions taken here where SPEC §3.2–3.3 is silent:

- Names are dot-separated lowercase segments `[a-z0-9]+(-[a-z0-9]+)*`; every
  name's parent must be defined too. `*`, `default` and `unknown` are reserved.
- A pattern `x` matches x and everything below it, `x.*` only what is below x
  (so x must have children), `*` everything.
- `defaults.<regime>.<purpose pattern>.<category pattern>` is `allow` or
  `deny`. The most specific match wins: category specificity first, then
  purpose; a deeper `x` beats a shallower one, `x.*` beats `x` (it names the
  descendants explicitly) and `*` is least specific. No match, or a regime
  without defaults, is `deny`.
- `prohibited` and `special` guard whole subtrees in both directions: a
  question about `content` is prohibited when `content.private` is, because a
  yes would cover the private part too; likewise a category is special when
  it is, or lies above or below, a special category.
- `regimes` maps a name to ISO 3166-1 alpha-2 codes (any case in, uppercase
  stored); a country belongs to at most one regime; `default` (every other
  country) and `unknown` (no jurisdiction) are implicit and cannot be listed.
- Every top-level key is required, and unknown keys are errors: a policy is a
  promise to users, so a typo must not silently become "no rule".
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Final, Literal, TypeAlias

import iso3166

from ledger.errors import InvalidInput, PolicyError
from ledger.tlog.canonical import MAX_SAFE_INTEGER

Default: TypeAlias = Literal["allow", "deny"]

WILDCARD: Final = "*"
DEFAULT_REGIME: Final = "default"
UNKNOWN_REGIME: Final = "unknown"
RESERVED_REGIMES: Final = (DEFAULT_REGIME, UNKNOWN_REGIME)

_SEGMENT = r"[a-z0-9]+(?:-[a-z0-9]+)*"
# Matches the width of the category/purpose columns in the schema.
MAX_NAME_LENGTH: Final = 128
_NAME_RE: Final = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
_SEGMENT_RE: Final = re.compile(_SEGMENT)
# Keys that can follow a dot in a field path without quoting.
_BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")

_TOP_LEVEL_KEYS: Final = (
    "version",
    "categories",
    "purposes",
    "regimes",
    "prohibited",
    "special",
    "minors_eligible",
    "defaults",
)
# Optional keys, with the value a document without them means.
DEFAULT_PURGE_WITHIN: Final = 30
MAX_PURGE_WITHIN: Final = 3650


def ancestors(name: str) -> tuple[str, ...]:
    """`"a.b.c"` -> `("a.b.c", "a.b", "a")`: the name itself first, the root last."""
    parts = name.split(".")
    return tuple(".".join(parts[:depth]) for depth in range(len(parts), 0, -1))


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether `pattern` (`x`, `x.*` or `*`) covers the node `name`."""
    if pattern == WILDCARD:
        return True
    if pattern.endswith(".*"):
        return name.startswith(pattern[:-1])
    return name == pattern or name.startswith(pattern + ".")


def _pattern_overlaps(pattern: str, name: str) -> bool:
    # True when the pattern covers `name`, or something below it: an answer
    # about `name` speaks for its whole subtree.
    if pattern_matches(pattern, name):
        return True
    base = pattern[:-2] if pattern.endswith(".*") else pattern
    return base.startswith(name + ".") or (pattern.endswith(".*") and base == name)


def _specificity(pattern: str) -> int:
    # `*` < `a` < `a.*` < `a.b` < `a.b.*` ...: depth decides, and `x.*` edges
    # out `x` because it singles out the descendants.
    if pattern == WILDCARD:
        return 0
    if pattern.endswith(".*"):
        return 2 * (pattern.count(".")) + 1
    return 2 * (pattern.count(".") + 1)


@dataclass(frozen=True, slots=True)
class TaxonomyNode:
    """One category or purpose: its name, what it means, and its names elsewhere."""

    name: str
    description: str
    maps_to: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class ProhibitedRule:
    """A (category pattern, purpose pattern) pair that is never eligible."""

    category: str
    purpose: str


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated policy. Build one with `from_document`, `from_toml` or `default_policy`.

    The constructor trusts its arguments; it only precomputes the answers that
    eligibility needs for every (category, purpose, regime), so that the hot
    path is a dictionary lookup.
    """

    version: int
    category_nodes: Mapping[str, TaxonomyNode]
    purpose_nodes: Mapping[str, TaxonomyNode]
    regimes: Mapping[str, tuple[str, ...]]
    prohibited: tuple[ProhibitedRule, ...]
    special: tuple[str, ...]
    minors_eligible: bool
    defaults: Mapping[str, Mapping[str, Mapping[str, Default]]]
    # Days a platform has to purge a record from a dataset once it stops being
    # eligible (SPEC §7.2): an obligation's `due` is its cause time plus this.
    purge_within: int = DEFAULT_PURGE_WITHIN

    categories: tuple[str, ...] = field(init=False, compare=False)
    purposes: tuple[str, ...] = field(init=False, compare=False)
    _regime_by_country: dict[str, str] = field(init=False, compare=False, repr=False)
    _special_categories: frozenset[str] = field(init=False, compare=False, repr=False)
    _prohibited_pairs: dict[tuple[str, str], bool] = field(init=False, compare=False, repr=False)
    _default_table: dict[tuple[str, str, str], Default] = field(
        init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        categories = tuple(self.category_nodes)
        purposes = tuple(self.purpose_nodes)
        regime_by_country = {
            country: regime for regime, countries in self.regimes.items() for country in countries
        }
        special = frozenset(c for c in categories if self._compute_special(c))
        prohibited = {(c, p): self._compute_prohibited(c, p) for c in categories for p in purposes}
        defaults = {
            (regime, c, p): self._compute_default(regime, c, p)
            for regime in self.regime_names
            for c in categories
            for p in purposes
        }
        # Frozen dataclass: derived fields can only be set this way.
        object.__setattr__(self, "categories", categories)
        object.__setattr__(self, "purposes", purposes)
        object.__setattr__(self, "_regime_by_country", regime_by_country)
        object.__setattr__(self, "_special_categories", special)
        object.__setattr__(self, "_prohibited_pairs", prohibited)
        object.__setattr__(self, "_default_table", defaults)

    # ------------------------------------------------------------ documents

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Policy:
        """Validate a policy document (parsed TOML or JSON) and build the policy.

        Raises `PolicyError` whose `field` names the offending part, e.g.
        ``prohibited[0].category``.
        """
        return _parse_document(doc)

    @classmethod
    def from_toml(cls, text: str) -> Policy:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # The message already ends in "(at line L, column C)".
            raise PolicyError(f"invalid TOML: {exc}") from exc
        return cls.from_document(doc)

    def to_document(self) -> dict[str, Any]:
        """The policy as JSON-able data: what `policy.published` carries in the log."""
        return {
            "version": self.version,
            "categories": _nodes_document(self.category_nodes),
            "purposes": _nodes_document(self.purpose_nodes),
            "regimes": {name: list(codes) for name, codes in self.regimes.items()},
            "prohibited": [
                {"category": rule.category, "purpose": rule.purpose} for rule in self.prohibited
            ],
            "special": list(self.special),
            "minors_eligible": self.minors_eligible,
            "purge_within": self.purge_within,
            "defaults": {
                regime: {purpose: dict(by_category) for purpose, by_category in rules.items()}
                for regime, rules in self.defaults.items()
            },
        }

    # ------------------------------------------------------------ taxonomy

    @property
    def regime_names(self) -> tuple[str, ...]:
        """Every regime a subject can fall into, the implicit ones last."""
        return (*self.regimes, *RESERVED_REGIMES)

    def check_category(
        self, name: str, *, field: str = "category", allow_wildcard: bool = False
    ) -> str:
        """Return `name` if it is a category of this policy, else raise `InvalidInput`."""
        return _check_name(name, self.category_nodes, "category", field, allow_wildcard)

    def check_purpose(
        self, name: str, *, field: str = "purpose", allow_wildcard: bool = False
    ) -> str:
        """Return `name` if it is a purpose of this policy, else raise `InvalidInput`."""
        return _check_name(name, self.purpose_nodes, "purpose", field, allow_wildcard)

    # ------------------------------------------------------------ rules

    def is_special(self, category: str) -> bool:
        """Whether only an explicit grant can make `category` eligible."""
        if category in self.category_nodes:
            return category in self._special_categories
        return self._compute_special(category)

    def is_prohibited(self, category: str, purpose: str) -> bool:
        """Whether (category, purpose) is never eligible, whatever the consent."""
        hit = self._prohibited_pairs.get((category, purpose))
        return self._compute_prohibited(category, purpose) if hit is None else hit

    def regime_of(self, jurisdiction: str | None) -> str:
        """The regime of a subject's jurisdiction: a named one, `default` or `unknown`."""
        if not jurisdiction:
            return UNKNOWN_REGIME
        return self._regime_by_country.get(jurisdiction.upper(), DEFAULT_REGIME)

    def default_for(self, regime: str, category: str, purpose: str) -> Default:
        """What applies in `regime` when the subject has made no applicable decision."""
        hit = self._default_table.get((regime, category, purpose))
        return self._compute_default(regime, category, purpose) if hit is None else hit

    def _compute_special(self, category: str) -> bool:
        return any(_pattern_overlaps(special, category) for special in self.special)

    def _compute_prohibited(self, category: str, purpose: str) -> bool:
        return any(
            _pattern_overlaps(rule.category, category) and _pattern_overlaps(rule.purpose, purpose)
            for rule in self.prohibited
        )

    def _compute_default(self, regime: str, category: str, purpose: str) -> Default:
        best: Default = "deny"
        best_key = (-1, -1)
        for purpose_pattern, by_category in self.defaults.get(regime, {}).items():
            if not pattern_matches(purpose_pattern, purpose):
                continue
            purpose_key = _specificity(purpose_pattern)
            for category_pattern, value in by_category.items():
                if not pattern_matches(category_pattern, category):
                    continue
                key = (_specificity(category_pattern), purpose_key)
                if key > best_key:
                    best, best_key = value, key
        return best


@cache
def default_policy() -> Policy:
    """The policy shipped in `ledger/consent/policies/default.toml`."""
    text = resources.files("ledger.consent").joinpath("policies/default.toml").read_text("utf-8")
    return Policy.from_toml(text)


# ---------------------------------------------------------------- validation


def _check_name(
    name: str, nodes: Mapping[str, TaxonomyNode], kind: str, field: str, allow_wildcard: bool
) -> str:
    if not isinstance(name, str):
        raise InvalidInput(f"expected a {kind} name, got {type(name).__name__}", field=field)
    if name in nodes:
        return name
    if name == WILDCARD:
        if allow_wildcard:
            return name
        raise InvalidInput(f"'*' is not allowed here; name one {kind}", field=field)
    known = sorted(nodes)
    close = difflib.get_close_matches(name, known, n=3)
    if close:
        hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        shown = ", ".join(known[:6])
        more = f" and {len(known) - 6} more" if len(known) > 6 else ""
        hint = f"known: {shown}{more}"
    raise InvalidInput(f"unknown {kind} {name!r}; {hint}", field=field)


def _path(prefix: str, key: str) -> str:
    # Quote keys the way TOML needs them, so the path matches what the author wrote.
    part = key if _BARE_KEY_RE.fullmatch(key) else f'"{key}"'
    return f"{prefix}.{part}" if prefix else part


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"expected a table, got {_kind(value)}", field=field)
    for key in value:
        if not isinstance(key, str):
            raise PolicyError(f"keys must be strings, got {key!r}", field=field)
    return value


def _list(value: Any, field: str) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise PolicyError(f"expected a list, got {_kind(value)}", field=field)
    return value


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(f"expected a string, got {_kind(value)}", field=field)
    return value


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return repr(value)


def _exact_keys(
    table: Mapping[str, Any], field: str, required: Sequence[str], optional: Sequence[str] = ()
) -> None:
    for key in table:
        if key not in required and key not in optional:
            raise PolicyError(f"unknown key {key!r}", field=_path(field, key))
    for key in required:
        if key not in table:
            raise PolicyError("is required", field=_path(field, key))


def _parse_document(doc: Mapping[str, Any]) -> Policy:
    doc = _mapping(doc, "policy")
    _exact_keys(doc, "", _TOP_LEVEL_KEYS, ("purge_within",))

    version = doc["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PolicyError(f"expected a positive integer, got {_kind(version)}", field="version")
    if version > MAX_SAFE_INTEGER:
        raise PolicyError(
            f"must be at most {MAX_SAFE_INTEGER} (an exact JSON number)", field="version"
        )

    minors_eligible = doc["minors_eligible"]
    if not isinstance(minors_eligible, bool):
        raise PolicyError(
            f"expected true or false, got {_kind(minors_eligible)}", field="minors_eligible"
        )

    purge_within = doc.get("purge_within", DEFAULT_PURGE_WITHIN)
    if (
        isinstance(purge_within, bool)
        or not isinstance(purge_within, int)
        or not 1 <= purge_within <= MAX_PURGE_WITHIN
    ):
        raise PolicyError(
            f"expected a whole number of days from 1 to {MAX_PURGE_WITHIN}, "
            f"got {_kind(purge_within)}",
            field="purge_within",
        )

    categories = _parse_taxonomy(doc["categories"], "categories")
    purposes = _parse_taxonomy(doc["purposes"], "purposes")
    regimes = _parse_regimes(doc["regimes"])

    prohibited = []
    for index, raw in enumerate(_list(doc["prohibited"], "prohibited")):
        at = f"prohibited[{index}]"
        rule = _mapping(raw, at)
        _exact_keys(rule, at, ("category", "purpose"))
        prohibited.append(
            ProhibitedRule(
                category=_parse_pattern(rule["category"], categories, "category", f"{at}.category"),
                purpose=_parse_pattern(rule["purpose"], purposes, "purpose", f"{at}.purpose"),
            )
        )

    special: list[str] = []
    for index, raw in enumerate(_list(doc["special"], "special")):
        at = f"special[{index}]"
        name = _string(raw, at)
        if name not in categories:
            raise PolicyError(f"unknown category {name!r}", field=at)
        if name in special:
            raise PolicyError(f"{name!r} is listed twice", field=at)
        special.append(name)

    defaults = _parse_defaults(doc["defaults"], categories, purposes, (*regimes, *RESERVED_REGIMES))

    return Policy(
        version=version,
        category_nodes=categories,
        purpose_nodes=purposes,
        regimes=regimes,
        prohibited=tuple(prohibited),
        special=tuple(special),
        minors_eligible=minors_eligible,
        defaults=defaults,
        purge_within=purge_within,
    )


def _parse_taxonomy(value: Any, field: str) -> dict[str, TaxonomyNode]:
    kind = "category" if field == "categories" else "purpose"
    table = _mapping(value, field)
    if not table:
        raise PolicyError(f"at least one {kind} is required", field=field)
    nodes: dict[str, TaxonomyNode] = {}
    for name, raw in table.items():
        at = _path(field, name)
        if len(name) > MAX_NAME_LENGTH:
            raise PolicyError(
                f"{kind} name is {len(name)} characters; at most {MAX_NAME_LENGTH} are allowed",
                field=at,
            )
        if not _NAME_RE.fullmatch(name):
            raise PolicyError(
                f"invalid {kind} name {name!r}: expected dot-separated lowercase segments "
                "of letters, digits and single hyphens, like 'content.public'",
                field=at,
            )
        entry = _mapping(raw, at)
        _exact_keys(entry, at, ("description",), ("maps_to",))
        description = _string(entry["description"], _path(at, "description")).strip()
        if not description:
            raise PolicyError("must not be empty", field=_path(at, "description"))
        nodes[name] = TaxonomyNode(name, description, _parse_maps_to(entry.get("maps_to", {}), at))
    for name in nodes:
        parent = ancestors(name)[1:2]
        if parent and parent[0] not in nodes:
            raise PolicyError(
                f"parent {kind} {parent[0]!r} is not defined", field=_path(field, name)
            )
    return nodes


def _parse_maps_to(value: Any, at: str) -> dict[str, tuple[str, ...]]:
    at = _path(at, "maps_to")
    mappings: dict[str, tuple[str, ...]] = {}
    for vocabulary, raw in _mapping(value, at).items():
        where = _path(at, vocabulary)
        if not _SEGMENT_RE.fullmatch(vocabulary):
            raise PolicyError(
                f"invalid vocabulary name {vocabulary!r}: expected lowercase like 'fideslang'",
                field=where,
            )
        terms = tuple(_string(t, f"{where}[{i}]") for i, t in enumerate(_list(raw, where)))
        for index, term in enumerate(terms):
            if not term.strip():
                raise PolicyError("must not be empty", field=f"{where}[{index}]")
        mappings[vocabulary] = terms
    return mappings


def _parse_regimes(value: Any) -> dict[str, tuple[str, ...]]:
    regimes: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for name, raw in _mapping(value, "regimes").items():
        at = _path("regimes", name)
        if name in RESERVED_REGIMES:
            raise PolicyError(
                f"{name!r} is reserved: 'default' is every country in no other regime, "
                "'unknown' is a subject without a jurisdiction",
                field=at,
            )
        if not _SEGMENT_RE.fullmatch(name):
            raise PolicyError(
                f"invalid regime name {name!r}: expected lowercase like 'gdpr'", field=at
            )
        codes: list[str] = []
        for index, raw_code in enumerate(_list(raw, at)):
            where = f"{at}[{index}]"
            code = _string(raw_code, where).upper()
            if code not in iso3166.countries_by_alpha2:
                raise PolicyError(
                    f"{raw_code!r} is not an ISO 3166-1 alpha-2 country code", field=where
                )
            if code in owner:
                other = owner[code]
                problem = "is listed twice" if other == name else f"is already in regime {other!r}"
                raise PolicyError(f"{code!r} {problem}", field=where)
            owner[code] = name
            codes.append(code)
        regimes[name] = tuple(codes)
    return regimes


def _parse_pattern(value: Any, nodes: Mapping[str, TaxonomyNode], kind: str, field: str) -> str:
    pattern = _string(value, field)
    if pattern == WILDCARD:
        return pattern
    if pattern.endswith(".*"):
        base = pattern[:-2]
        if base not in nodes:
            raise PolicyError(f"unknown {kind} {base!r} in {pattern!r}", field=field)
        if not any(name.startswith(base + ".") for name in nodes):
            raise PolicyError(
                f"{pattern!r} matches nothing: {base!r} has nothing below it", field=field
            )
        return pattern
    if pattern not in nodes:
        raise PolicyError(f"unknown {kind} {pattern!r}", field=field)
    return pattern


def _parse_defaults(
    value: Any,
    categories: Mapping[str, TaxonomyNode],
    purposes: Mapping[str, TaxonomyNode],
    regime_names: Sequence[str],
) -> dict[str, dict[str, dict[str, Default]]]:
    defaults: dict[str, dict[str, dict[str, Default]]] = {}
    for regime, raw_rules in _mapping(value, "defaults").items():
        at = _path("defaults", regime)
        if regime not in regime_names:
            raise PolicyError(
                f"unknown regime {regime!r}; known: {', '.join(regime_names)}", field=at
            )
        rules: dict[str, dict[str, Default]] = {}
        for purpose_pattern, raw_by_category in _mapping(raw_rules, at).items():
            purpose_at = _path(at, purpose_pattern)
            _parse_pattern(purpose_pattern, purposes, "purpose", purpose_at)
            by_category: dict[str, Default] = {}
            for category_pattern, raw_value in _mapping(raw_by_category, purpose_at).items():
                where = _path(purpose_at, category_pattern)
                _parse_pattern(category_pattern, categories, "category", where)
                if raw_value == "allow":
                    by_category[category_pattern] = "allow"
                elif raw_value == "deny":
                    by_category[category_pattern] = "deny"
                else:
                    raise PolicyError(
                        f"expected 'allow' or 'deny', got {_kind(raw_value)}", field=where
                    )
            rules[purpose_pattern] = by_category
        defaults[regime] = rules
    return defaults


def _nodes_document(nodes: Mapping[str, TaxonomyNode]) -> dict[str, Any]:
    return {
        name: {
            "description": node.description,
            "maps_to": {vocabulary: list(terms) for vocabulary, terms in node.maps_to.items()},
        }
        for name, node in nodes.items()
    }
