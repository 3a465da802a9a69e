"""Reading, writing and checking binary glTF (GLB) avatars for the `avatar3d` mode.

The browser shows avatars with TalkingHead 1.7.0 (three.js 0.180). What it needs from a
GLB was read in its source (`modules/talkinghead.mjs`):

- `showAvatar` throws "Avatar object X not found" unless the scene has a node named
  `Armature` (its `modelRoot`) and every bone its poses animate (`posePropNames`: the
  Ready Player Me names below, minus the eyes).
- Each frame it reads `LeftEye`/`RightEye` (avatar height, eye contact), `Head`, `Neck`,
  `Hips` and the toe bones; a missing one is a TypeError in the render loop.
- Morph targets are looked up under the Armature by name (three.js takes the names from
  `mesh.extras.targetNames`). Lip-sync needs the 15 Oculus visemes `viseme_<id>`; moods,
  blinks, gaze and the random "alive" baseline index many ARKit shapes directly
  (`this.mtAvatar[name].…`), so a missing one is also a TypeError, not a silent no-op.

three.js renames nodes as it loads them (`PropertyBinding.sanitizeNodeName`: whitespace
becomes "_", the characters `[].:/` are dropped), so names are compared after that step.
"""
from __future__ import annotations

import json
import re
import struct

MAX_AVATAR_BYTES = 30 * 1024 * 1024

GLB_MAGIC = b"glTF"
CHUNK_JSON = 0x4E4F534A  # "JSON" as a little-endian uint32
CHUNK_BIN = 0x004E4942  # "BIN\0"
_HEADER = struct.Struct("<4sII")  # magic, version, total length
_CHUNK_HEADER = struct.Struct("<II")  # chunk length, chunk type

# The bones TalkingHead poses (union of its pose templates and pose deltas), then the
# ones its render loop reads. `Armature` is the root it looks for first.
_POSED_BONES = (
    "Hips", "Spine", "Spine1", "Spine2", "Neck", "Head",
    *(f"{side}{part}" for side in ("Left", "Right") for part in (
        "Shoulder", "Arm", "ForeArm", "Hand", "UpLeg", "Leg", "Foot", "ToeBase")),
    *(f"{side}Hand{finger}{joint}" for side in ("Left", "Right")
      for finger in ("Thumb", "Index", "Middle", "Ring", "Pinky") for joint in (1, 2, 3)),
)
REQUIRED_BONES: tuple[str, ...] = ("Armature", *_POSED_BONES, "LeftEye", "RightEye")

VISEMES = ("sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "I", "O", "U")

# The ARKit blend shapes TalkingHead 1.7.0 names in its code (moods, emoji expressions,
# blinks, gaze, random baseline). Of the 52 ARKit shapes only jawLeft and jawRight are
# never used, so they are not required.
ARKIT_USED = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight",
    "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawOpen",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
    "tongueOut",
)
REQUIRED_MORPHS: tuple[str, ...] = (*(f"viseme_{v}" for v in VISEMES), *ARKIT_USED)

# Extensions three.js cannot decode unless the page registers an extra decoder, which
# TalkingHead does only for Draco and only when asked to.
UNSUPPORTED_REQUIRED_EXTENSIONS = ("EXT_meshopt_compression", "KHR_draco_mesh_compression",
                                   "KHR_texture_basisu")

_COMPONENT_BYTES = {5120: 1, 5121: 1, 5122: 2, 5123: 2, 5125: 4, 5126: 4}
_TYPE_COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


# --- reading and writing -------------------------------------------------------------

def _pad(data: bytes, filler: bytes) -> bytes:
    """GLB chunks start on 4-byte boundaries."""
    return data + filler * (-len(data) % 4)


def write_glb(gltf: dict, binary: bytes) -> bytes:
    """A GLB file: header, JSON chunk, and a BIN chunk when `binary` is not empty.

    The JSON is written with sorted keys and no spaces so equal inputs give equal bytes.
    """
    json_chunk = _pad(json.dumps(gltf, sort_keys=True, separators=(",", ":")).encode(), b" ")
    chunks = _CHUNK_HEADER.pack(len(json_chunk), CHUNK_JSON) + json_chunk
    if binary:
        bin_chunk = _pad(bytes(binary), b"\0")
        chunks += _CHUNK_HEADER.pack(len(bin_chunk), CHUNK_BIN) + bin_chunk
    return _HEADER.pack(GLB_MAGIC, 2, _HEADER.size + len(chunks)) + chunks


def read_glb(data: bytes) -> tuple[dict, bytes]:
    """(glTF JSON, BIN chunk or b"") of a GLB; ValueError saying what is wrong otherwise."""
    if len(data) < _HEADER.size:
        raise ValueError(f"not a GLB (only {len(data)} bytes)")
    magic, version, length = _HEADER.unpack_from(data)
    if magic != GLB_MAGIC:
        raise ValueError("not a GLB (bad magic)")
    if version != 2:
        raise ValueError(f"GLB container version {version} (need 2)")
    if length > len(data):
        raise ValueError(f"truncated GLB: header says {length} bytes, got {len(data)}")
    chunks = _read_chunks(data[:length])
    if not chunks or chunks[0][0] != CHUNK_JSON:
        raise ValueError("GLB has no JSON chunk first")
    try:
        gltf = json.loads(chunks[0][1].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"GLB JSON chunk is not valid JSON: {err}") from None
    if not isinstance(gltf, dict):
        raise ValueError("GLB JSON chunk is not an object")
    binary = chunks[1][1] if len(chunks) > 1 and chunks[1][0] == CHUNK_BIN else b""
    return gltf, binary


def _read_chunks(data: bytes) -> list[tuple[int, bytes]]:
    """[(type, payload)] of the chunks after the 12-byte header."""
    chunks, offset = [], _HEADER.size
    while offset < len(data):
        if offset + _CHUNK_HEADER.size > len(data):
            raise ValueError("truncated GLB: chunk header cut off")
        size, kind = _CHUNK_HEADER.unpack_from(data, offset)
        start = offset + _CHUNK_HEADER.size
        if start + size > len(data):
            raise ValueError(f"truncated GLB: chunk of {size} bytes at {offset} runs past the end")
        chunks.append((kind, data[start:start + size]))
        offset = start + size
    return chunks


# --- validation ----------------------------------------------------------------------

def sanitize_node_name(name: str) -> str:
    """The name three.js gives a node (see PropertyBinding.sanitizeNodeName)."""
    return re.sub(r"[\[\]\.:/]", "", re.sub(r"\s", "_", name))


def validate_avatar_glb(data: bytes) -> list[str]:
    """[] when TalkingHead can use this GLB; otherwise one readable line per problem.

    Never raises: any input, however broken, gives a list.
    """
    if len(data) > MAX_AVATAR_BYTES:
        return [f"file is {len(data) / 2**20:.1f} MB (limit {MAX_AVATAR_BYTES // 2**20} MB)"]
    try:
        gltf, binary = read_glb(data)
    except ValueError as err:
        return [str(err)]
    try:
        return _gltf_problems(gltf, binary)
    except Exception as err:  # noqa: BLE001 - malformed JSON of any shape must become a message
        return [f"malformed glTF JSON ({type(err).__name__}: {err})"]


def _gltf_problems(gltf: dict, binary: bytes) -> list[str]:
    version = str(_dict(gltf.get("asset")).get("version", "?"))
    if not version.startswith("2"):
        return [f"glTF version {version.split('.')[0]} (need 2)"]
    problems = _extension_problems(gltf) + _uri_problems(gltf) + _buffer_problems(gltf, binary)
    nodes = _list(gltf.get("nodes"))
    reachable = _scene_nodes(gltf, nodes)
    names = {sanitize_node_name(str(_dict(nodes[i]).get("name", ""))) for i in reachable}
    missing_bones = [b for b in REQUIRED_BONES if b not in names]
    if missing_bones:
        problems.append("missing bones: " + ", ".join(missing_bones))
    problems += _morph_problems(gltf, nodes, reachable)
    return problems


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _index(value, size: int) -> int | None:
    """`value` when it is a valid index into a list of `size`, else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size else None


def _extension_problems(gltf: dict) -> list[str]:
    required = [str(e) for e in _list(gltf.get("extensionsRequired"))]
    return [f"requires extension {e} (the avatar viewer cannot decode it)"
            for e in required if e in UNSUPPORTED_REQUIRED_EXTENSIONS]


def _uri_problems(gltf: dict) -> list[str]:
    """Files the browser would fetch from elsewhere: a GLB avatar must be self-contained.

    Embedded `data:` URIs are fine (they are part of the file).
    """
    problems = []
    for kind in ("buffers", "images"):
        for i, item in enumerate(_list(gltf.get(kind))):
            uri = _dict(item).get("uri")
            if uri is not None and not str(uri).startswith("data:"):
                problems.append(f"external URI in {kind}[{i}]")
    return problems


def _buffer_problems(gltf: dict, binary: bytes) -> list[str]:
    """Buffer views and accessors that point past the data they claim (the loader would fail)."""
    buffers = _list(gltf.get("buffers"))
    sizes = []
    problems = []
    for i, buf in enumerate(buffers):
        length = _dict(buf).get("byteLength", 0)
        sizes.append(length if isinstance(length, int) else 0)
        if "uri" not in _dict(buf) and i == 0 and sizes[-1] > len(binary):
            problems.append(f"buffers[0] is {sizes[-1]} bytes but the BIN chunk has {len(binary)}")
    views = _list(gltf.get("bufferViews"))
    for i, view in enumerate(views):
        view = _dict(view)
        buf = _index(view.get("buffer"), len(buffers))
        end = _int(view.get("byteOffset", 0)) + _int(view.get("byteLength", 0))
        if buf is None or end > sizes[buf]:
            problems.append(f"bufferViews[{i}] lies outside its buffer")
    for i, acc in enumerate(_list(gltf.get("accessors"))):
        if not _accessor_fits(_dict(acc), views):
            problems.append(f"accessors[{i}] lies outside its buffer view")
    return problems


def _int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _accessor_fits(acc: dict, views: list) -> bool:
    if "bufferView" not in acc:
        return True  # all zeros (or sparse): nothing to read
    view_index = _index(acc.get("bufferView"), len(views))
    if view_index is None:
        return False
    view = _dict(views[view_index])
    element = _COMPONENT_BYTES.get(acc.get("componentType"), 0) * _TYPE_COMPONENTS.get(acc.get("type"), 0)
    count = _int(acc.get("count"))
    if element == 0 or count <= 0:
        return False
    stride = _int(view.get("byteStride")) or element
    needed = _int(acc.get("byteOffset", 0)) + stride * (count - 1) + element
    return needed <= _int(view.get("byteLength"))


def _scene_nodes(gltf: dict, nodes: list) -> list[int]:
    """Indices of the nodes in the scene three.js shows (`scene`, else the first), sorted."""
    scenes = _list(gltf.get("scenes"))
    chosen = _index(gltf.get("scene", 0), len(scenes))
    roots = _list(_dict(scenes[chosen]).get("nodes")) if chosen is not None else list(range(len(nodes)))
    return sorted(_descendants(roots, nodes))


def _descendants(roots: list, nodes: list) -> set[int]:
    """The nodes under (and including) `roots`; cycles and bad indices are ignored."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        i = _index(stack.pop(), len(nodes))
        if i is None or i in seen:
            continue
        seen.add(i)
        stack.extend(_list(_dict(nodes[i]).get("children")))
    return seen


def _morph_problems(gltf: dict, nodes: list, reachable: list[int]) -> list[str]:
    """Required morph targets that no mesh under the Armature names.

    TalkingHead only looks for morphs under the `Armature` node, so meshes elsewhere
    do not count.
    """
    armature = [i for i in reachable if sanitize_node_name(str(_dict(nodes[i]).get("name", ""))) == "Armature"]
    under = _descendants(armature[:1], nodes) if armature else set()
    meshes = _list(gltf.get("meshes"))
    found: set[str] = set()
    problems = []
    for i in sorted(under):
        mesh_index = _index(_dict(nodes[i]).get("mesh"), len(meshes))
        if mesh_index is None:
            continue
        mesh = _dict(meshes[mesh_index])
        names = _list(_dict(mesh.get("extras")).get("targetNames"))
        counts = {len(_list(_dict(p).get("targets"))) for p in _list(mesh.get("primitives"))}
        if names and counts != {len(names)}:
            problems.append(f"meshes[{mesh_index}] has {len(names)} target names for "
                            f"{sorted(counts)} morph targets (three.js ignores the names)")
            continue
        found.update(str(n) for n in names)
    missing = [m for m in REQUIRED_MORPHS if m not in found]
    if missing:
        problems.append("missing morph targets: " + ", ".join(missing))
    return problems
