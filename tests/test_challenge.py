"""WWW-Authenticate parsing: real registry headers, RFC 7235 corner cases, and garbage."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from puller.transport.challenge import Challenge, format_www_authenticate, parse_www_authenticate

HUB = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"'


def test_docker_hub_ping_challenge() -> None:
    (challenge,) = parse_www_authenticate(HUB)
    assert challenge.scheme == "bearer"
    assert challenge.get("realm") == "https://auth.docker.io/token"
    assert challenge.get("service") == "registry.docker.io"
    assert challenge.get("scope") is None
    assert challenge.get("scope", "fallback") == "fallback"


def test_scope_with_commas_is_one_value() -> None:
    header = HUB + ',scope="repository:samalba/my-app:pull,push"'
    (challenge,) = parse_www_authenticate(header)
    assert challenge.get("scope") == "repository:samalba/my-app:pull,push"
    assert [name for name, _ in challenge.params] == ["realm", "service", "scope"]


def test_insufficient_scope_error() -> None:
    header = ('Bearer realm="https://auth.example/token", error="insufficient_scope", '
              'scope="repository:a:pull repository:b:pull"')
    (challenge,) = parse_www_authenticate(header)
    assert challenge.get("error") == "insufficient_scope"
    assert challenge.get("scope") == "repository:a:pull repository:b:pull"


def test_scheme_and_param_names_are_case_insensitive() -> None:
    (challenge,) = parse_www_authenticate('BEARER Realm="r", SERVICE=svc')
    assert challenge.scheme == "bearer"
    assert challenge.params == (("realm", "r"), ("service", "svc"))
    assert challenge.get("REALM") == "r"


def test_basic_challenge_from_htpasswd_registry() -> None:
    (challenge,) = parse_www_authenticate('Basic realm="Registry Realm"')
    assert challenge == Challenge("basic", (("realm", "Registry Realm"),))


def test_several_challenges_in_one_header() -> None:
    header = 'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"'
    first, second = parse_www_authenticate(header)
    assert first.scheme == "newauth"
    assert first.get("type") == "1"
    assert first.get("title") == 'Login to "apps"'
    assert second == Challenge("basic", (("realm", "simple"),))


def test_quoted_pairs_are_unescaped() -> None:
    (challenge,) = parse_www_authenticate(r'Bearer realm="a\\b\"c\d"')
    assert challenge.get("realm") == 'a\\b"cd'


def test_token68_forms() -> None:
    assert parse_www_authenticate("Negotiate a87421000492aa874209af8bc028") == (
        Challenge("negotiate", (), "a87421000492aa874209af8bc028"),)
    # Padding is part of the token68, not an auth-param with an empty value.
    basic, bearer = parse_www_authenticate("Basic dXNlcjpwYXNz==, Bearer realm=x")
    assert basic.token68 == "dXNlcjpwYXNz==" and not basic.params
    assert bearer.get("realm") == "x"


def test_bare_schemes_and_empty_list_elements() -> None:
    assert parse_www_authenticate(", Negotiate,, Basic ,") == (
        Challenge("negotiate"), Challenge("basic"))


def test_whitespace_around_equals_and_commas() -> None:
    (challenge,) = parse_www_authenticate('Bearer  realm = "r" ,\tservice= s ,, scope =x,')
    assert challenge.params == (("realm", "r"), ("service", "s"), ("scope", "x"))


def test_empty_quoted_value() -> None:
    (challenge,) = parse_www_authenticate('Bearer realm="", service="s"')
    assert challenge.get("realm") == ""


@pytest.mark.parametrize("garbage", [
    "", "   ", ",,,", "{}", "!!! ???", '"quoted"', "=", "Bearer ===x", "Bearer (comment)",
    'Bearer realm="unterminated', 'Bearer realm="x\\', "Bearer realm=x y", "\x00\x01",
])
def test_garbage_gives_an_empty_tuple(garbage: str) -> None:
    assert parse_www_authenticate(garbage) == ()


def test_odd_but_grammatical_headers() -> None:
    # A lone word is a scheme; "realm=" at the end is a token68 with padding, not a param.
    assert parse_www_authenticate("realm") == (Challenge("realm"),)
    assert parse_www_authenticate("Bearer realm=") == (Challenge("bearer", (), "realm="),)


def test_damage_late_in_the_header_keeps_what_came_before() -> None:
    header = 'Basic realm="ok", Bearer realm="x", service="s", scope="broken'
    basic, bearer = parse_www_authenticate(header)
    assert basic.get("realm") == "ok"
    assert bearer.params == (("realm", "x"), ("service", "s"))


def test_not_a_string_gives_nothing() -> None:
    assert parse_www_authenticate(None) == ()  # type: ignore[arg-type]


def test_challenge_validates_its_fields() -> None:
    with pytest.raises(ValueError):
        Challenge("Bearer")
    with pytest.raises(ValueError):
        Challenge("bearer", (("Realm", "x"),))
    with pytest.raises(ValueError):
        Challenge("basic", (("realm", "x"),), "abc")
    with pytest.raises(ValueError):
        Challenge("basic", (), "a b")


def test_format_quotes_and_escapes() -> None:
    challenge = Challenge("bearer", (("realm", 'a"b\\c'), ("scope", "x:pull,push")))
    assert str(challenge) == 'bearer realm="a\\"b\\\\c", scope="x:pull,push"'
    assert parse_www_authenticate(str(challenge)) == (challenge,)


# --- properties -------------------------------------------------------------------------

untimed = settings(deadline=None)  # tests never assert on time: no per-example deadline

# Values may hold anything a header can carry: commas, quotes, backslashes, spaces, '='.
_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from(
    ',"\\ =\t\u00e9'), max_size=40)
_names = st.sampled_from(["realm", "service", "scope", "error", "error_description"])
_scheme = st.sampled_from(["bearer", "basic", "newauth", "x-custom.1"])


@untimed
@given(realm=_value, service=_value, scope=_value)
def test_docker_style_header_round_trips(realm: str, service: str, scope: str) -> None:
    def q(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    header = f"Bearer realm={q(realm)},service={q(service)},scope={q(scope)}"
    (challenge,) = parse_www_authenticate(header)
    assert (challenge.get("realm"), challenge.get("service"), challenge.get("scope")) == (
        realm, service, scope)


_challenge = st.builds(
    Challenge, _scheme,
    st.lists(st.tuples(_names, _value), max_size=4, unique_by=lambda p: p[0]).map(tuple))
_token68_challenge = st.builds(
    lambda scheme, token, pad: Challenge(scheme, (), token + "=" * pad),
    _scheme, st.from_regex(r"[A-Za-z0-9._~+/-]{1,20}", fullmatch=True), st.integers(0, 2))


@untimed
@given(st.lists(_challenge | _token68_challenge, min_size=1, max_size=4))
def test_formatted_challenges_parse_back_to_themselves(challenges: list[Challenge]) -> None:
    assert parse_www_authenticate(format_www_authenticate(challenges)) == tuple(challenges)


@untimed
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(text: str) -> None:
    for challenge in parse_www_authenticate(text):
        assert isinstance(challenge, Challenge)


@untimed
@given(st.text(alphabet='Bearer realm=",\\ \tx', max_size=60))
def test_header_shaped_text_never_raises(text: str) -> None:
    parse_www_authenticate(text)
