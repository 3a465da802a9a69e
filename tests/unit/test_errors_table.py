"""One table maps every error code to its HTTP status: a code raised anywhere but missing from
the table would silently answer the default status."""
from __future__ import annotations

import ast
import pathlib

from deployments.api.edge import DEFAULT_STATUS, HTTP_STATUS, http_status, ws_close_code
from deployments.api.errors import ServiceError
from deployments.vram.data import Code

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _string_args(path: pathlib.Path, callee: str, keyword: str | None = None, position: int | None = 0) -> set[str]:
    """Literal strings passed to `callee(...)` in `path`, by position or keyword."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == callee:
            args = (list(node.args[position:position + 1]) if position is not None else []) + [k.value for k in node.keywords if k.arg == keyword]
            found |= {a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return found


def test_every_service_error_code_has_a_status():
    raised = set()
    for path in (ROOT / "deployments").rglob("*.py"):
        raised |= _string_args(path, "ServiceError")
    assert raised, "no ServiceError found: the scan is broken"
    assert raised - set(HTTP_STATUS) == set()


def test_every_pipeline_error_code_has_a_status():
    codes = set()
    for path in (ROOT / "models").rglob("*.py"):
        codes |= _string_args(path, "PersonaError", "code", None) | _string_args(path, "PipelineError", "code", None)
        tree = ast.parse(path.read_text())
        codes |= {n.value.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  and [getattr(t, "id", None) for t in n.targets] == ["code"] and isinstance(n.value, ast.Constant)}
    assert {"no_face", "face_too_small", "weights_missing"} <= codes
    assert codes - set(HTTP_STATUS) == set()


def test_placement_refusals_are_503_with_retry_after():
    for code in (Code.QUEUED, Code.REFUSED_NO_ROOM, Code.REFUSED_QUEUE_TIMEOUT):
        assert http_status(code.value) == 503


def test_statuses_and_close_codes():
    assert http_status("unknown_session") == 404 and ws_close_code("unknown_session") == 4404
    assert http_status("bad_pacing") == 400 and ws_close_code("bad_pacing") == 4400
    assert http_status("a_new_pipeline_code") == DEFAULT_STATUS == 422
    assert all(400 <= s < 600 for s in HTTP_STATUS.values())


def test_service_errors_carry_no_status_and_survive_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(ServiceError("too_many_sessions", "full", retry_after_s=30)))
    assert (err.code, err.reason, err.retry_after_s) == ("too_many_sessions", "full", 30)
    assert not hasattr(err, "status")
