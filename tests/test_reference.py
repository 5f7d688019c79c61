"""Reference parsing follows Docker's normalisation rules exactly."""
from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings, strategies as st

from puller.errors import BadReference
from puller.reference import Reference, parse, parse_digest

SHA = "sha256:" + "ab" * 32
SHA512 = "sha512:" + "cd" * 64


@pytest.mark.parametrize(("text", "expected"), [
    ("alpine", "docker.io/library/alpine:latest"),
    ("alpine:3.10", "docker.io/library/alpine:3.10"),
    ("library/alpine", "docker.io/library/alpine:latest"),
    ("docker.io/alpine", "docker.io/library/alpine:latest"),
    ("index.docker.io/alpine:3", "docker.io/library/alpine:3"),
    ("registry-1.docker.io/library/alpine", "docker.io/library/alpine:latest"),
    ("user/app", "docker.io/user/app:latest"),
    ("a/b/c:v1", "docker.io/a/b/c:v1"),
    ("ghcr.io/owner/repo:1.0", "ghcr.io/owner/repo:1.0"),
    ("quay.io/app", "quay.io/app:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/app:tag", "localhost:5000/app:tag"),
    ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000/a/b:c"),
    ("[::1]:5000/x", "[::1]:5000/x:latest"),
    ("myhost:5000/x", "myhost:5000/x:latest"),
    ("x:5000", "docker.io/library/x:5000"),  # no slash: 5000 is a tag, as for Docker
    (f"alpine@{SHA}", f"docker.io/library/alpine@{SHA}"),
    (f"alpine:3.10@{SHA}", f"docker.io/library/alpine:3.10@{SHA}"),
    (f"localhost:5000/x@{SHA512}", f"localhost:5000/x@{SHA512}"),
    ("ns/a_b__c.d-e---f", "docker.io/ns/a_b__c.d-e---f:latest"),
    ("alpine:_Tag.1-x", "docker.io/library/alpine:_Tag.1-x"),
])
def test_normalises_like_docker(text: str, expected: str) -> None:
    assert str(parse(text)) == expected


def test_fields_of_a_docker_hub_reference() -> None:
    ref = parse("alpine:3.10")
    assert ref == Reference("docker.io", "library/alpine", "3.10", None)
    assert ref.name == "docker.io/library/alpine"
    assert ref.familiar == "alpine:3.10"
    assert ref.api_host == "registry-1.docker.io"
    assert ref.identifier == "3.10"
    assert ref.scope() == "repository:library/alpine:pull"
    assert ref.scope(["pull", "push"]) == "repository:library/alpine:pull,push"
    assert not ref.is_loopback


def test_first_component_is_a_host_only_with_dot_colon_or_localhost() -> None:
    assert parse("foo/bar").registry == "docker.io"
    assert parse("foo/bar").repository == "foo/bar"
    assert parse("foo.com/bar").registry == "foo.com"
    assert parse("foo:1/bar").registry == "foo:1"
    assert parse("localhost/bar").registry == "localhost"


def test_library_only_for_one_component_docker_hub_names() -> None:
    assert parse("foo/bar").repository == "foo/bar"
    assert parse("ghcr.io/bar").repository == "bar"
    assert parse("docker.io/library/a/b").repository == "library/a/b"


def test_host_port_name_tag_splits_at_the_right_colon() -> None:
    ref = parse("localhost:5000/team/app:1.2")
    assert (ref.registry, ref.repository, ref.tag) == ("localhost:5000", "team/app", "1.2")
    assert ref.api_host == "localhost:5000"
    assert parse("localhost:5000/app").tag == "latest"


def test_digest_wins_but_the_tag_is_kept_for_display() -> None:
    ref = parse(f"alpine:3.10@{SHA}")
    assert ref.identifier == SHA
    assert ref.tag == "3.10"
    assert ref.familiar == f"alpine:3.10@{SHA}"
    only_digest = parse(f"alpine@{SHA}")
    assert only_digest.tag is None  # no default tag when a digest is given
    assert only_digest.familiar == f"alpine@{SHA}"


def test_default_tag_can_be_changed_or_left_out() -> None:
    assert parse("alpine", default_tag="edge").tag == "edge"
    assert parse("alpine", default_tag=None).tag is None
    assert str(parse("alpine", default_tag=None)) == "docker.io/library/alpine"


@pytest.mark.parametrize(("text", "familiar"), [
    ("alpine", "alpine:latest"),
    ("docker.io/library/alpine:1", "alpine:1"),
    ("user/app:1", "user/app:1"),
    ("library/a/b:1", "library/a/b:1"),
    ("localhost:5000/x:1", "localhost:5000/x:1"),
    ("docker.io/a.b/c", "docker.io/a.b/c:latest"),  # Docker's "a.b/c" would name host a.b
    ("docker.io/localhost/c", "docker.io/localhost/c:latest"),
])
def test_familiar_form_is_what_docker_shows(text: str, familiar: str) -> None:
    assert parse(text).familiar == familiar


@pytest.mark.parametrize(("registry", "loopback"), [
    ("localhost", True), ("localhost:5000", True), ("127.0.0.1:5000", True),
    ("127.10.0.3", True), ("[::1]:5000", True), ("[::1]", True),
    ("10.0.0.1:5000", False), ("ghcr.io", False), ("localhost.example.com", False),
    ("[2001:db8::1]:5000", False),
])
def test_is_loopback(registry: str, loopback: bool) -> None:
    assert parse(f"{registry}/x").is_loopback is loopback


def test_with_tag_and_with_digest() -> None:
    ref = parse("alpine:3.10")
    assert str(ref.with_tag("edge")) == "docker.io/library/alpine:edge"
    pinned = ref.with_digest(SHA)
    assert pinned.identifier == SHA and pinned.tag == "3.10"
    assert pinned.with_tag("x").digest is None
    with pytest.raises(BadReference, match="invalid tag"):
        ref.with_tag("-bad")
    with pytest.raises(BadReference, match="invalid digest"):
        ref.with_digest("sha256:abc")


@pytest.mark.parametrize(("text", "message"), [
    ("", "it is empty"),
    ("Alpine", "repository name must be lowercase"),
    ("user/App:1", "repository name must be lowercase"),
    ("ghcr.io/Owner/x", "repository name must be lowercase"),
    ("alpine:" + "a" * 129, "tag is longer than 128 characters"),
    ("alpine:-x", "invalid tag"),
    ("alpine:", "invalid tag"),
    ("alpine@sha256:abc", "invalid digest"),
    ("alpine@md5:" + "a" * 32, 'unsupported algorithm "md5"'),
    ("alpine@sha256:" + "A" * 64, "lowercase hex"),
    ("alpine@", "invalid digest"),
    (f"alpine@{SHA}@{SHA}", "more than one '@'"),
    ("foo..bar", "invalid repository path component"),
    ("foo-/bar", "invalid repository path component"),
    ("_foo", "invalid repository path component"),
    ("foo//bar", "empty path component"),
    ("foo/", "empty path component"),
    ("localhost:5000/", "repository name is empty"),
    ("a b", "invalid repository path component"),
    ("-bad.host/x", "invalid registry host"),
    ("host.com:99999/x", "invalid registry port"),
    ("[::zz]:5000/x", "invalid registry host"),
    ("[1:2]/x", "invalid IPv6 address"),
    ("a" * 64, "image ID"),
    ("x/" + "a" * 250, "longer than 255 characters"),
])
def test_bad_references_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(BadReference, match=message) as info:
        parse(text)
    assert str(info.value).startswith("invalid reference ")
    assert "\n" not in str(info.value)


def test_error_message_is_one_line_even_for_control_characters() -> None:
    with pytest.raises(BadReference) as info:
        parse("alpine\n:evil\x1b[31m")
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


def test_name_length_limit_counts_the_normalised_name() -> None:
    # docker.io/library/ + 237 chars = 255: allowed; one more is not.
    assert parse("a" * 237).repository == "library/" + "a" * 237
    with pytest.raises(BadReference, match="255"):
        parse("a" * 238)


def test_bad_reference_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse("UPPER")


def test_constructor_refuses_non_canonical_fields() -> None:
    with pytest.raises(BadReference, match=r"docker\.io"):
        Reference("index.docker.io", "library/alpine", "latest")
    with pytest.raises(BadReference, match="namespace"):
        Reference("docker.io", "alpine", "latest")
    with pytest.raises(BadReference, match="lowercase"):
        Reference("ghcr.io", "A", "latest")
    with pytest.raises(BadReference, match="must be a string"):
        Reference("ghcr.io", "a", 3)  # type: ignore[arg-type]


def test_references_are_frozen_and_hashable() -> None:
    ref = parse("alpine")
    with pytest.raises(AttributeError):
        ref.tag = "x"  # type: ignore[misc]
    assert {ref, parse("docker.io/library/alpine:latest")} == {ref}


def test_parse_digest() -> None:
    assert parse_digest(SHA) == SHA
    assert parse_digest(SHA512) == SHA512
    for bad in ("sha256:" + "a" * 63, "sha384:" + "a" * 96, "sha256", ":abc", "sha512:" + "a" * 64):
        with pytest.raises(BadReference, match="invalid digest"):
            parse_digest(bad)


# --- properties -------------------------------------------------------------------------

untimed = settings(deadline=None)  # tests never assert on time: no per-example deadline

_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_separator = st.sampled_from([".", "_", "__", "-", "--"])
_component = st.builds(lambda a, s, b: a + s + b if s is not None else a,
                       _alnum, st.none() | _separator, _alnum)
_path = st.lists(_component, min_size=1, max_size=4).map("/".join)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
_registry = st.one_of(
    st.just("docker.io"),
    st.lists(_label, min_size=2, max_size=3).map(".".join),
    st.builds(lambda h, p: f"{h}:{p}", st.sampled_from(["localhost", "127.0.0.1", "[::1]", "reg"]),
              st.integers(1, 65535)),
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_digest = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex()),
    st.binary(min_size=64, max_size=64).map(lambda b: "sha512:" + b.hex()),
)


@st.composite
def references(draw: st.DrawFn) -> Reference:
    registry = draw(_registry)
    path = draw(_path)
    if registry == "docker.io" and "/" not in path:
        path = "library/" + path
    tag, digest = draw(st.sampled_from([(True, False), (False, True), (True, True)]))
    return Reference(registry, path, draw(_tag) if tag else None, draw(_digest) if digest else None)


@untimed
@given(references())
def test_round_trip_through_str(ref: Reference) -> None:
    assert parse(str(ref)) == ref


@untimed
@given(references())
def test_round_trip_through_familiar(ref: Reference) -> None:
    assert parse(ref.familiar) == ref


@untimed
@given(references())
def test_digest_always_wins(ref: Reference) -> None:
    assert ref.identifier == (ref.digest or ref.tag)


@untimed
@given(st.text(max_size=300))
def test_arbitrary_text_only_ever_raises_bad_reference(text: str) -> None:
    try:
        ref = parse(text)
    except BadReference as exc:
        assert str(exc).startswith(("invalid reference ", "invalid digest"))
        assert "\n" not in str(exc)
    else:
        assert parse(str(ref)) == ref  # whatever parses is stable under normalisation


@untimed
@given(st.text(alphabet="abcAB019:/@._-[]", max_size=60))
def test_reference_shaped_text_only_ever_raises_bad_reference(text: str) -> None:
    with contextlib.suppress(BadReference):
        parse(text)
