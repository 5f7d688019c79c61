import json

import pytest

from fixtures.images import D, F, build_image, build_index, tar_layer
from puller.errors import ManifestError
from puller.manifest import Index, Manifest, digest_of, parse


def _img(fmt="docker"):
    return build_image([tar_layer(D("etc"), F("etc/x", "1"))], fmt=fmt)


def test_docker_manifest_parses_and_keeps_raw_bytes():
    img = _img()
    m = parse(img.manifest, "application/vnd.docker.distribution.manifest.v2+json")
    assert isinstance(m, Manifest) and m.digest == img.digest == digest_of(img.manifest)
    assert [d.digest for d in m.layers] == img.layer_digests


def test_oci_twin_changes_only_media_types():
    m = parse(_img().manifest)
    twin = m.to_oci()
    assert twin.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert twin.config.media_type == "application/vnd.oci.image.config.v1+json"
    assert twin.layers[0].media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert [d.digest for d in twin.layers] == [d.digest for d in m.layers]
    assert twin.digest != m.digest


def test_index_skips_attestations():
    idx = build_index([_img(), build_image([tar_layer(F("a"))], arch="arm64", variant="v8")])
    i = parse(idx.manifest)
    assert isinstance(i, Index) and len(i.manifests) == 3
    assert [str(d.platform) for d in i.images()] == ["linux/amd64", "linux/arm64"]


@pytest.mark.parametrize("raw,ct,msg", [
    (b"<html>oops</html>", "text/html", "not valid JSON"),
    (b'{"schemaVersion": 1, "name": "x"}', None, "schema 1"),
    (b'{}', "application/vnd.docker.distribution.manifest.v1+prettyjws", "schema 1"),
    (b'[]', None, "not a JSON object"),
    (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {"digest": "sha256:zz", "size": 1}, "layers": []}', None, "invalid digest"),
    (b'{"schemaVersion": 2, "mediaType": "application/x-weird"}', None, "unsupported"),
])
def test_bad_manifests_are_refused_with_a_reason(raw, ct, msg):
    with pytest.raises(ManifestError, match=msg):
        parse(raw, ct)


def test_media_type_must_agree_with_content_type():
    with pytest.raises(ManifestError, match="disagrees"):
        parse(_img().manifest, "application/vnd.oci.image.manifest.v1+json")


def test_size_cap():
    big = json.dumps({"schemaVersion": 2, "pad": "x" * (4 * 1024 * 1024)}).encode()
    with pytest.raises(ManifestError, match="larger than 4 MiB"):
        parse(big)
