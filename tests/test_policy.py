"""The policy document: the shipped default, validation, and the rules' semantics."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from ledger.consent.policy import Policy, ancestors, default_policy, pattern_matches
from ledger.errors import InvalidInput, PolicyError

SPEC_CATEGORIES = (
    "content.public",
    "content.private",
    "content.private.messages",
    "profile",
    "profile.employment",
    "profile.education",
    "biometric",
    "biometric.face",
    "biometric.voice",
    "activity",
    "location",
)
SPEC_PURPOSES = (
    "ai-training",
    "ai-training.generative",
    "ai-inference",
    "data-mining",
    "third-party-sharing",
)

# Every mapping of the SPEC §3.2 tables: (categories|purposes, name, vocabulary, term).
SPEC_MAPPINGS = (
    ("categories", "content.public", "fideslang", "user.content.public"),
    ("categories", "content.public", "dpv", "pd:PubliclyAvailableSocialMedia"),
    ("categories", "content.private", "fideslang", "user.content.private"),
    ("categories", "content.private.messages", "dpv", "pd:SocialMediaCommunication"),
    ("categories", "profile", "fideslang", "user.name"),
    ("categories", "profile.employment", "fideslang", "user.job_title"),
    ("categories", "profile.employment", "fideslang", "user.workplace"),
    ("categories", "profile.employment", "dpv", "pd:EmploymentHistory"),
    ("categories", "profile.education", "dpv", "pd:Education"),
    ("categories", "biometric", "fideslang", "user.biometric"),
    ("categories", "biometric", "dpv", "pd:Biometric"),
    ("categories", "biometric", "gdpr", "Art. 9"),
    ("categories", "biometric.face", "dpv", "pd:FacialPrint"),
    ("categories", "biometric.voice", "fideslang", "user.biometric.voice"),
    ("categories", "activity", "fideslang", "user.behavior"),
    ("categories", "location", "fideslang", "user.location"),
    ("purposes", "ai-training", "aipref", "train-ai"),
    ("purposes", "ai-training", "cawg", "cawg.ai_training"),
    ("purposes", "ai-training", "fideslang", "train_ai_system"),
    ("purposes", "ai-training", "dpv", "ai:ModelTraining"),
    ("purposes", "ai-training.generative", "cawg", "cawg.ai_generative_training"),
    ("purposes", "ai-inference", "cawg", "cawg.ai_inference"),
    ("purposes", "data-mining", "cawg", "cawg.data_mining"),
    ("purposes", "data-mining", "tdmrep", "tdm-reservation"),
    ("purposes", "third-party-sharing", "fideslang", "third_party_sharing"),
)

EU_EEA_GB_CH = (
    "AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK "
    "IS LI NO GB CH"
).split()


def _walk(value: Any) -> None:
    # What the log's canonical encoding accepts: no floats, no tuples, string keys.
    assert not isinstance(value, float | tuple)
    if isinstance(value, dict):
        assert all(isinstance(key, str) for key in value)
        for item in value.values():
            _walk(item)
    elif isinstance(value, list):
        for item in value:
            _walk(item)


# ---------------------------------------------------------------- the default


def test_default_policy_loads_with_the_spec_taxonomy() -> None:
    policy = default_policy()
    assert policy.version == 1
    assert set(SPEC_CATEGORIES) | {"content"} == set(policy.categories)
    assert set(SPEC_PURPOSES) == set(policy.purposes)
    assert policy.special == ("biometric",)
    assert policy.minors_eligible is False
    assert [(r.category, r.purpose) for r in policy.prohibited] == [("content.private", "*")]


def test_default_policy_is_cached() -> None:
    assert default_policy() is default_policy()


def test_every_name_has_its_parent_defined() -> None:
    policy = default_policy()
    for name in policy.categories:
        assert set(ancestors(name)) <= set(policy.categories)
    for name in policy.purposes:
        assert set(ancestors(name)) <= set(policy.purposes)


@pytest.mark.parametrize(
    ("section", "name", "vocabulary", "term"),
    SPEC_MAPPINGS,
    ids=[f"{name}-{vocabulary}-{term}" for _, name, vocabulary, term in SPEC_MAPPINGS],
)
def test_default_policy_carries_the_spec_mappings(
    section: str, name: str, vocabulary: str, term: str
) -> None:
    nodes = default_policy().to_document()[section]
    assert term in nodes[name]["maps_to"][vocabulary]


def test_default_policy_round_trips_through_its_document() -> None:
    policy = default_policy()
    document = policy.to_document()
    _walk(document)
    again = Policy.from_document(json.loads(json.dumps(document)))
    assert again == policy
    assert again.to_document() == document


@pytest.mark.parametrize(
    ("jurisdiction", "regime"),
    [
        *[pytest.param(code, "gdpr", id=code) for code in EU_EEA_GB_CH],
        pytest.param("de", "gdpr", id="lowercase"),
        pytest.param("RE", "gdpr", id="outermost-region"),
        pytest.param("US", "default", id="US"),
        pytest.param("BR", "default", id="BR"),
        pytest.param(None, "unknown", id="none"),
    ],
)
def test_regime_of(jurisdiction: str | None, regime: str) -> None:
    assert default_policy().regime_of(jurisdiction) == regime


@pytest.mark.parametrize(
    ("category", "special"),
    [
        ("biometric", True),
        ("biometric.face", True),
        ("biometric.voice", True),
        ("profile", False),
        ("content.public", False),
    ],
)
def test_is_special_covers_the_subtree(category: str, special: bool) -> None:
    assert default_policy().is_special(category) is special


@pytest.mark.parametrize(
    ("category", "purpose", "prohibited"),
    [
        pytest.param("content.private", "ai-training", True, id="private"),
        pytest.param("content.private.messages", "data-mining", True, id="messages"),
        pytest.param("content.private", "ai-training.generative", True, id="any-purpose"),
        pytest.param("content", "ai-inference", True, id="parent-would-include-private"),
        pytest.param("content.public", "ai-training", False, id="public"),
        pytest.param("biometric.face", "ai-training", False, id="biometric"),
    ],
)
def test_is_prohibited(category: str, purpose: str, prohibited: bool) -> None:
    assert default_policy().is_prohibited(category, purpose) is prohibited


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("*", "a.b", True),
        ("a", "a", True),
        ("a", "a.b.c", True),
        ("a", "ab", False),
        ("a.*", "a", False),
        ("a.*", "a.b", True),
        ("a.b", "a", False),
    ],
)
def test_pattern_matches(pattern: str, name: str, matches: bool) -> None:
    assert pattern_matches(pattern, name) is matches


def test_ancestors_lists_self_first() -> None:
    assert ancestors("a.b.c") == ("a.b.c", "a.b", "a")
    assert ancestors("a") == ("a",)


# ---------------------------------------------------------------- checking names


def test_check_category_accepts_known_names() -> None:
    assert default_policy().check_category("biometric.face") == "biometric.face"
    assert default_policy().check_purpose("ai-training.generative") == "ai-training.generative"


def test_check_category_suggests_a_close_name() -> None:
    with pytest.raises(InvalidInput, match=r"unknown category 'content\.pubic'.*'content\.public'"):
        default_policy().check_category("content.pubic")


def test_check_purpose_lists_valid_names_and_the_field() -> None:
    with pytest.raises(InvalidInput, match="unknown purpose 'zzz'; known: ") as caught:
        default_policy().check_purpose("zzz", field="items[3].purpose")
    assert caught.value.field == "items[3].purpose"
    assert not isinstance(caught.value, PolicyError)


def test_wildcard_only_where_allowed() -> None:
    policy = default_policy()
    with pytest.raises(InvalidInput, match=r"'\*' is not allowed here"):
        policy.check_category("*")
    assert policy.check_category("*", allow_wildcard=True) == "*"
    assert policy.check_purpose("*", allow_wildcard=True) == "*"


def test_patterns_are_not_names() -> None:
    with pytest.raises(InvalidInput, match="unknown category"):
        default_policy().check_category("profile.*")


# ---------------------------------------------------------------- validation


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        del doc[key]

    return mutate


NODE = {"description": "x"}

INVALID_DOCUMENTS = [
    pytest.param(
        _set(("categories", "video.clips"), NODE),
        'categories."video.clips"',
        "parent category 'video' is not defined",
        id="unknown-parent",
    ),
    pytest.param(
        _set(("purposes", "ads.targeting"), NODE),
        'purposes."ads.targeting"',
        "parent purpose 'ads' is not defined",
        id="unknown-parent-purpose",
    ),
    pytest.param(
        _set(("categories", "Photos"), NODE),
        "categories.Photos",
        "invalid category name 'Photos'",
        id="uppercase-name",
    ),
    pytest.param(
        _set(("categories", "content..x"), NODE),
        'categories."content..x"',
        "invalid category name",
        id="empty-segment",
    ),
    pytest.param(
        _set(("categories", "a--b"), NODE),
        "categories.a--b",
        "invalid category name",
        id="double-hyphen",
    ),
    pytest.param(
        _set(("categories", "*"), NODE),
        'categories."*"',
        "invalid category name",
        id="wildcard-name",
    ),
    pytest.param(
        _set(("categories", "location", "description"), ""),
        "categories.location.description",
        "must not be empty",
        id="empty-description",
    ),
    pytest.param(
        _set(("categories", "location", "special"), True),
        "categories.location.special",
        "unknown key 'special'",
        id="special-inside-category",
    ),
    pytest.param(
        _set(("categories", "location", "maps_to"), {"fideslang": "user.location"}),
        "categories.location.maps_to.fideslang",
        "expected a list",
        id="mapping-not-a-list",
    ),
    pytest.param(
        _set(("prohibited", 0, "category"), "x"),
        "prohibited[0].category",
        "unknown category 'x'",
        id="prohibited-unknown-category",
    ),
    pytest.param(
        _set(("prohibited", 0, "purpose"), "training"),
        "prohibited[0].purpose",
        "unknown purpose 'training'",
        id="prohibited-unknown-purpose",
    ),
    pytest.param(
        _set(("prohibited", 0), {"category": "content.private"}),
        "prohibited[0].purpose",
        "is required",
        id="prohibited-missing-purpose",
    ),
    pytest.param(
        _set(("special",), ["biometric", "bio"]),
        "special[1]",
        "unknown category 'bio'",
        id="special-unknown-category",
    ),
    pytest.param(
        _set(("special",), ["*"]),
        "special[0]",
        "unknown category",
        id="special-wildcard",
    ),
    pytest.param(
        _set(("defaults", "default", "ai-training", "posts"), "allow"),
        "defaults.default.ai-training.posts",
        "unknown category 'posts'",
        id="defaults-unknown-category",
    ),
    pytest.param(
        _set(("defaults", "default", "training"), {"*": "allow"}),
        "defaults.default.training",
        "unknown purpose 'training'",
        id="defaults-unknown-purpose",
    ),
    pytest.param(
        _set(("defaults", "default", "ai-training", "location.*"), "allow"),
        'defaults.default.ai-training."location.*"',
        "matches nothing",
        id="defaults-star-of-a-leaf",
    ),
    pytest.param(
        _set(("defaults", "ccpa"), {}),
        "defaults.ccpa",
        "unknown regime 'ccpa'",
        id="defaults-unknown-regime",
    ),
    pytest.param(
        _set(("defaults", "gdpr", "*", "*"), "maybe"),
        'defaults.gdpr."*"."*"',
        "expected 'allow' or 'deny', got 'maybe'",
        id="bad-default-value",
    ),
    pytest.param(
        _set(("defaults", "gdpr", "*", "*"), False),
        'defaults.gdpr."*"."*"',
        "expected 'allow' or 'deny'",
        id="boolean-default-value",
    ),
    pytest.param(
        _set(("regimes", "ccpa"), ["US", "XX"]),
        "regimes.ccpa[1]",
        "'XX' is not an ISO 3166-1 alpha-2 country code",
        id="bad-country-code",
    ),
    pytest.param(
        _set(("regimes", "ccpa"), ["USA"]),
        "regimes.ccpa[0]",
        "not an ISO 3166-1 alpha-2",
        id="alpha-3-code",
    ),
    pytest.param(
        _set(("regimes", "eea"), ["US", "de"]),
        "regimes.eea[1]",
        "'DE' is already in regime 'gdpr'",
        id="country-in-two-regimes",
    ),
    pytest.param(
        _set(("regimes", "ccpa"), ["US", "us"]),
        "regimes.ccpa[1]",
        "'US' is listed twice",
        id="country-twice",
    ),
    pytest.param(
        _set(("regimes", "default"), ["US"]),
        "regimes.default",
        "'default' is reserved",
        id="reserved-default",
    ),
    pytest.param(
        _set(("regimes", "unknown"), []),
        "regimes.unknown",
        "'unknown' is reserved",
        id="reserved-unknown",
    ),
    pytest.param(_set(("version",), 1.0), "version", "positive integer", id="float-version"),
    pytest.param(_set(("version",), True), "version", "positive integer", id="bool-version"),
    pytest.param(_set(("version",), 0), "version", "positive integer", id="zero-version"),
    pytest.param(_set(("minors_eligible",), "no"), "minors_eligible", "true or false", id="minors"),
    pytest.param(_set(("categories",), {}), "categories", "at least one", id="no-categories"),
    pytest.param(_set(("minors",), False), "minors", "unknown key 'minors'", id="unknown-key"),
    pytest.param(_delete("prohibited"), "prohibited", "is required", id="missing-key"),
]


@pytest.mark.parametrize(("mutate", "field", "message"), INVALID_DOCUMENTS)
def test_invalid_policy_is_refused_naming_the_field(
    mutate: Callable[[dict[str, Any]], None], field: str, message: str
) -> None:
    document = copy.deepcopy(default_policy().to_document())
    mutate(document)
    with pytest.raises(PolicyError, match=message) as caught:
        Policy.from_document(document)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_error_message_reads_field_first() -> None:
    document = copy.deepcopy(default_policy().to_document())
    document["prohibited"][0]["category"] = "x"
    with pytest.raises(PolicyError) as caught:
        Policy.from_document(document)
    assert str(caught.value) == "prohibited[0].category: unknown category 'x'"


def test_toml_syntax_error_gives_the_line() -> None:
    with pytest.raises(PolicyError, match=r"invalid TOML: .*line 3"):
        Policy.from_toml("version = 2\nminors_eligible = false\nspecial = = []\n")


def test_unquoted_dotted_category_is_caught() -> None:
    # TOML reads [categories.content.public] as a table inside `content`.
    text = (
        "version = 1\nminors_eligible = false\nspecial = []\nprohibited = []\n"
        "[regimes]\n[defaults]\n[purposes.p]\ndescription = 'p'\n"
        "[categories.content]\ndescription = 'c'\n"
        "[categories.content.public]\ndescription = 'c'\n"
    )
    with pytest.raises(PolicyError, match="unknown key 'public'") as caught:
        Policy.from_toml(text)
    assert caught.value.field == "categories.content.public"


def test_regime_codes_are_stored_uppercase() -> None:
    document = copy.deepcopy(default_policy().to_document())
    document["regimes"]["ccpa"] = ["us"]
    policy = Policy.from_document(document)
    assert policy.regimes["ccpa"] == ("US",)
    assert policy.regime_of("Us") == "ccpa"


# ---------------------------------------------------------------- defaults

SPECIFICITY_POLICY = """
version = 1
minors_eligible = false
special = []
prohibited = []

[categories.a]
description = "a"
[categories."a.b"]
description = "a.b"
[categories."a.b.c"]
description = "a.b.c"
[categories.z]
description = "z"

[purposes.p]
description = "p"
[purposes."p.q"]
description = "p.q"
[purposes.r]
description = "r"
[purposes."r.s"]
description = "r.s"

[regimes]
strict = ["FR"]

[defaults.default."*"]
"*" = "allow"

[defaults.default.p]
"a" = "deny"
"a.*" = "allow"
"a.b.c" = "deny"
"z" = "deny"

[defaults.default."p.q"]
"z" = "allow"

[defaults.default.r]
"a.b" = "allow"

[defaults.default."r.s"]
"*" = "deny"

[defaults.unknown.r]
"z" = "allow"
"""


@pytest.mark.parametrize(
    ("regime", "category", "purpose", "expected"),
    [
        pytest.param("default", "z", "r", "allow", id="only-the-catch-all"),
        pytest.param("default", "a", "p", "deny", id="named-beats-star"),
        pytest.param("default", "a.b", "p", "allow", id="x-star-beats-x"),
        pytest.param("default", "a.b.c", "p", "deny", id="deeper-beats-x-star"),
        pytest.param("default", "a.b", "r.s", "allow", id="category-before-purpose"),
        pytest.param("default", "a", "r.s", "deny", id="purpose-breaks-category-tie"),
        pytest.param("default", "z", "p", "deny", id="named-purpose-beats-star"),
        pytest.param("default", "z", "p.q", "allow", id="deeper-purpose-wins-tie"),
        pytest.param("unknown", "z", "r", "allow", id="pattern-x-matches-x"),
        pytest.param("unknown", "z", "r.s", "allow", id="pattern-x-matches-below-x"),
        pytest.param("unknown", "a", "r", "deny", id="no-match-is-deny"),
        pytest.param("unknown", "z", "p", "deny", id="no-purpose-match-is-deny"),
        pytest.param("strict", "z", "r", "deny", id="regime-without-defaults-is-deny"),
        pytest.param("nonexistent", "z", "r", "deny", id="unknown-regime-is-deny"),
    ],
)
def test_most_specific_default_wins(
    regime: str, category: str, purpose: str, expected: str
) -> None:
    assert Policy.from_toml(SPECIFICITY_POLICY).default_for(regime, category, purpose) == expected


@pytest.mark.parametrize(
    ("regime", "category", "purpose", "expected"),
    [
        pytest.param("gdpr", "content.public", "ai-training", "deny", id="gdpr"),
        pytest.param("unknown", "content.public", "ai-training", "deny", id="unknown"),
        pytest.param("default", "content.public", "ai-training", "allow", id="public"),
        pytest.param("default", "content.public", "ai-training.generative", "allow", id="gen"),
        pytest.param("default", "profile", "ai-training", "allow", id="profile"),
        pytest.param("default", "profile.education", "ai-training", "allow", id="education"),
        pytest.param("default", "activity", "ai-training", "allow", id="activity"),
        pytest.param("default", "location", "ai-training", "deny", id="location"),
        pytest.param("default", "content", "ai-training", "deny", id="content-as-a-whole"),
        pytest.param("default", "content.public", "data-mining", "deny", id="data-mining"),
        pytest.param("default", "content.public", "ai-inference", "deny", id="inference"),
    ],
)
def test_shipped_defaults(regime: str, category: str, purpose: str, expected: str) -> None:
    assert default_policy().default_for(regime, category, purpose) == expected


def test_a_new_version_can_change_the_us_defaults() -> None:
    document = copy.deepcopy(default_policy().to_document())
    document["version"] = 2
    document["regimes"]["us"] = ["US"]
    document["defaults"]["us"] = {
        "ai-training": {"content.public": "allow", "profile.employment": "deny"},
        "data-mining": {"content.public": "allow"},
    }
    policy = Policy.from_document(document)
    assert policy.version == 2
    assert policy.regime_of("US") == "us"
    assert policy.default_for("us", "content.public", "data-mining") == "allow"
    assert policy.default_for("us", "profile.employment", "ai-training") == "deny"
    assert policy.default_for("us", "activity", "ai-training") == "deny"
    # Other countries outside the GDPR keep the shipped opt-out defaults.
    assert policy.regime_of("CA") == "default"
    assert policy.default_for("default", "activity", "ai-training") == "allow"
    assert Policy.from_document(policy.to_document()) == policy
