"""The shared weight loader finds files in the hub's cache layout and says what is missing."""
import pytest
import torch

from models.base import WeightsMissingError
from models.weights import WeightFile, load_torch_state_dict, missing, resolve
from tests.hf_layout import write_torch


def test_resolve_finds_official_layout(hf_cache):
    f = WeightFile("org/repo", "sub/dir/net.pth")
    write_torch(hf_cache, f.repo_id, f.filename, {"w": torch.ones(2)})
    path = resolve(f)
    assert path.name == "net.pth"
    assert torch.equal(load_torch_state_dict(path)["w"], torch.ones(2))
    assert missing([f]) == []


def test_missing_file_names_fetch_command(hf_cache):
    f = WeightFile("org/repo", "absent.pth")
    with pytest.raises(WeightsMissingError, match="lockn-bod weights fetch liveportrait"):
        resolve(f, mode="liveportrait")
    assert missing([f]) == [f]


class _Payload:
    """An arbitrary class: unpickling it would run code of the file's choosing."""


def test_weights_only_refuses_code(hf_cache):
    f = WeightFile("org/repo", "evil.pth")
    write_torch(hf_cache, f.repo_id, f.filename, {"x": _Payload()})
    with pytest.raises(Exception):
        load_torch_state_dict(resolve(f))
