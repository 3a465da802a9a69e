"""validate_avatar_glb names each problem of an uploaded GLB and never raises."""
import json
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.avatar3d.glb import (MAX_AVATAR_BYTES, REQUIRED_BONES, REQUIRED_MORPHS, read_glb,
                                 validate_avatar_glb, write_glb)


def minimal_gltf(bones=REQUIRED_BONES, morphs=REQUIRED_MORPHS) -> tuple[dict, bytes]:
    """A tiny avatar: the required node tree under Armature and one triangle whose
    morph targets carry the required names (all targets share one zero accessor)."""
    binary = struct.pack("<9f", 0, 0, 0, 1, 0, 0, 0, 1, 0) + bytes(36)  # positions, then zero offsets
    names = [b for b in bones if b != "Armature"]
    nodes = [{"name": "Armature", "children": list(range(1, len(names) + 2))}]
    nodes += [{"name": n} for n in names]
    nodes.append({"name": "Face", "mesh": 0})
    gltf = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": nodes,
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36},
                        {"buffer": 0, "byteOffset": 36, "byteLength": 36}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3",
                       "min": [0, 0, 0], "max": [1, 1, 0]},
                      {"bufferView": 1, "componentType": 5126, "count": 3, "type": "VEC3",
                       "min": [0, 0, 0], "max": [0, 0, 0]}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0},
                                    "targets": [{"POSITION": 1} for _ in morphs]}],
                    "extras": {"targetNames": list(morphs)}}],
    }
    if "Armature" not in bones:
        nodes[0]["name"] = "Root"
    return gltf, binary


def glb(**kwargs) -> bytes:
    return write_glb(*minimal_gltf(**kwargs))


def test_minimal_avatar_is_valid_and_round_trips():
    gltf, binary = minimal_gltf()
    data = write_glb(gltf, binary)
    assert validate_avatar_glb(data) == []
    again, again_binary = read_glb(data)
    assert again == gltf and again_binary[:len(binary)] == binary
    assert len(data) % 4 == 0


def test_required_names_match_talkinghead():
    assert "Armature" in REQUIRED_BONES and {"LeftEye", "RightEye", "Head", "LeftToeBase"} <= set(REQUIRED_BONES)
    assert len(REQUIRED_BONES) == 1 + 52 + 2  # root, the 52 posed bones, the eyes
    assert [m for m in REQUIRED_MORPHS if m.startswith("viseme_")][0] == "viseme_sil"
    assert len([m for m in REQUIRED_MORPHS if m.startswith("viseme_")]) == 15
    assert {"eyeBlinkLeft", "jawOpen", "mouthSmileLeft", "browInnerUp"} <= set(REQUIRED_MORPHS)


def test_missing_bones_are_listed():
    data = glb(bones=[b for b in REQUIRED_BONES if b not in ("LeftEye", "RightEye")])
    assert validate_avatar_glb(data) == ["missing bones: LeftEye, RightEye"]


def test_missing_armature_also_hides_the_morphs():
    problems = validate_avatar_glb(glb(bones=[b for b in REQUIRED_BONES if b != "Armature"]))
    assert problems[0] == "missing bones: Armature"
    assert problems[1].startswith("missing morph targets: viseme_sil, viseme_PP")


def test_missing_morphs_are_listed():
    data = glb(morphs=[m for m in REQUIRED_MORPHS if m not in ("viseme_aa", "jawOpen")])
    assert validate_avatar_glb(data) == ["missing morph targets: viseme_aa, jawOpen"]


def test_names_are_compared_as_three_js_loads_them():
    gltf, binary = minimal_gltf()
    head = next(n for n in gltf["nodes"] if n["name"] == "Head")
    head["name"] = "He:ad"  # three.js drops ':' so this still becomes "Head"
    assert validate_avatar_glb(write_glb(gltf, binary)) == []


def test_target_names_must_match_target_count():
    gltf, binary = minimal_gltf()
    gltf["meshes"][0]["primitives"][0]["targets"].pop()
    problems = validate_avatar_glb(write_glb(gltf, binary))
    assert "three.js ignores the names" in problems[0]


def test_external_uri_is_reported_and_data_uri_allowed():
    gltf, binary = minimal_gltf()
    gltf["images"] = [{"uri": "https://example.com/skin.png"}, {"uri": "data:image/png;base64,AAAA"}]
    gltf["buffers"].append({"byteLength": 4, "uri": "extra.bin"})
    problems = validate_avatar_glb(write_glb(gltf, binary))
    assert problems == ["external URI in buffers[1]", "external URI in images[0]"]


def test_unsupported_required_extension():
    gltf, binary = minimal_gltf()
    gltf["extensionsRequired"] = ["KHR_draco_mesh_compression", "KHR_materials_unlit"]
    problems = validate_avatar_glb(write_glb(gltf, binary))
    assert problems == ["requires extension KHR_draco_mesh_compression (the avatar viewer cannot decode it)"]


def test_accessor_past_its_view():
    gltf, binary = minimal_gltf()
    gltf["accessors"][0]["count"] = 4
    assert validate_avatar_glb(write_glb(gltf, binary)) == ["accessors[0] lies outside its buffer view"]


def test_bad_magic():
    assert validate_avatar_glb(b"GLTF" + glb()[4:]) == ["not a GLB (bad magic)"]


def test_wrong_gltf_version():
    gltf, binary = minimal_gltf()
    gltf["asset"]["version"] = "1.0"
    assert validate_avatar_glb(write_glb(gltf, binary)) == ["glTF version 1 (need 2)"]


def test_wrong_container_version():
    data = bytearray(glb())
    data[4:8] = struct.pack("<I", 1)
    assert validate_avatar_glb(bytes(data)) == ["GLB container version 1 (need 2)"]


def test_truncated():
    data = glb()
    problems = validate_avatar_glb(data[:-10])
    assert len(problems) == 1 and problems[0].startswith("truncated GLB")
    assert validate_avatar_glb(data[:5]) == ["not a GLB (only 5 bytes)"]


def test_oversize():
    data = glb()
    big = data + bytes(MAX_AVATAR_BYTES + 200_000 - len(data))
    assert validate_avatar_glb(big) == ["file is 30.2 MB (limit 30 MB)"]


def test_json_that_is_not_an_object():
    body = b"[1, 2]  "
    data = struct.pack("<4sII", b"glTF", 2, 12 + 8 + len(body)) + struct.pack("<II", len(body), 0x4E4F534A) + body
    assert validate_avatar_glb(data) == ["GLB JSON chunk is not an object"]


def test_read_glb_raises_value_error():
    with pytest.raises(ValueError, match="bad magic"):
        read_glb(b"\0" * 40)


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_never_raise(seed):
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
    assert isinstance(validate_avatar_glb(data), list)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 400))
def test_mutated_glb_never_raises(noise, cut):
    data = bytearray(glb())
    data[cut:cut + len(noise)] = noise
    assert isinstance(validate_avatar_glb(bytes(data)), list)


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
                        ["nodes", "scenes", "scene", "meshes", "accessors", "bufferViews", "buffers", "asset",
                         "version", "name", "children", "mesh", "extras", "targetNames", "primitives"]),
                        inner, max_size=4), max_leaves=20))
def test_odd_json_never_raises(value):
    gltf = {"asset": {"version": "2.0"}, "nodes": value, "meshes": value, "scenes": value, "accessors": value}
    assert isinstance(validate_avatar_glb(write_glb(json.loads(json.dumps(gltf)), b"")), list)
