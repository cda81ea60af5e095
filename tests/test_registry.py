"""Registry and checkpoint format: round trip, safety against pickles and
tampering, shipped-model checksums, listings and name errors."""
from __future__ import annotations

import json
import os
import pickle
import stat
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sepcli import audio, registry
from sepcli.errors import SepError

TINY = dict(N=8, L=4, B=6, H=10, Sc=5, P=3, X=3, R=2)


def tiny(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = registry.build("convtasnet", {**TINY, **kw})
    with torch.no_grad():  # move away from the default init so a lost tensor shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture
def mix() -> torch.Tensor:
    return torch.randn(2, 101, generator=torch.Generator().manual_seed(3))


def write_card(folder: Path, name: str, **card) -> None:
    (folder / f"{name}.json").write_text(json.dumps({"name": name, **card}))


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("causal", [False, True])
def test_save_load_round_trip_is_exact(tmp_path, mix, causal):
    model = tiny(causal=causal)
    path = tmp_path / "m.safetensors"
    sha = registry.save_model(model, path)
    assert sha == registry.file_sha256(path)
    loaded = registry.load_file(path)
    assert loaded.config == model.config and not loaded.training
    assert torch.equal(loaded(mix), model(mix))
    assert torch.equal(registry.load_model(path)(mix), model(mix))  # a path works too
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left
    # an ordinary new file's mode (mkstemp's 0600 would hide shared weights from other users)
    assert stat.S_IMODE(path.stat().st_mode) == audio.NEW_FILE_MODE


def test_checkpoint_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    registry.save_model(tiny(), path, extra={"recipe": "x.toml"})
    meta, tensors = registry.read_checkpoint(path)
    assert meta["format"] == registry.FORMAT and meta["family"] == "convtasnet"
    assert json.loads(meta["config"])["L"] == 4 and meta["recipe"] == "x.toml"
    assert meta["sep_version"]
    assert set(tensors) == set(tiny().state_dict())
    with pytest.raises(SepError, match="digest"):
        registry.save_model(tiny(), tmp_path / "n.safetensors", extra={"digest": "0"})


def test_half_precision_file(tmp_path, mix):
    model = tiny()
    registry.save_model(model, tmp_path / "a.safetensors")
    registry.save_model(model, tmp_path / "h.safetensors", dtype=torch.float16)
    _, stored = registry.read_checkpoint(tmp_path / "h.safetensors")
    assert all(t.dtype == torch.float16 for t in stored.values())
    saved = (tmp_path / "a.safetensors").stat().st_size - (tmp_path / "h.safetensors").stat().st_size
    assert saved >= 2 * registry.count_parameters(model) - 64
    loaded = registry.load_file(tmp_path / "h.safetensors")
    assert loaded.encoder.weight.dtype == torch.float32
    torch.testing.assert_close(loaded(mix), model(mix), rtol=0.05, atol=0.02)


def test_no_overwrite_without_force(tmp_path):
    path = tmp_path / "m.safetensors"
    registry.save_model(tiny(), path)
    with pytest.raises(SepError, match="exists"):
        registry.save_model(tiny(causal=True), path)
    assert not registry.load_file(path).config.causal
    registry.save_model(tiny(causal=True), path, force=True)
    assert registry.load_file(path).config.causal


# ----------------------------------------------------------------------------- safety


class Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "pickle"])
def test_pickled_checkpoint_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "pwned"
    obj = {"encoder.weight": torch.zeros(3), "x": Payload(marker)}
    path = tmp_path / "evil.safetensors"
    if writer == "torch_zip":
        torch.save(obj, path)
    elif writer == "torch_legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj))
    for load in (registry.load_file, registry.load_model, registry.read_checkpoint):
        with pytest.raises(SepError, match="pickle"):
            load(path)
    assert not marker.exists()
    # the payload is live: a plain unpickler does run it
    if writer == "pickle":
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_pickle_under_other_suffix_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"x": Payload(marker)}, path)
    with pytest.raises(SepError):
        registry.load_model(path)
    with pytest.raises(SepError):
        registry.load_model(str(path))
    assert not marker.exists()


def test_header_length_starting_like_a_pickle_still_loads(tmp_path, mix):
    """The first byte of a safetensors file is the header length's low byte; 0x80
    must not be mistaken for a pickle."""
    model = tiny()
    for n in range(256):
        path = tmp_path / f"m{n}.safetensors"
        registry.save_model(model, path, extra={"pad": "x" * n})
        if path.read_bytes()[:1] == b"\x80":
            break
        path.unlink()
    else:
        pytest.fail("no padding gave a header length ending in 0x80")
    assert torch.equal(registry.load_file(path)(mix), model(mix))


@pytest.mark.parametrize("keep", [0.5, 0.99, 10, 0])
def test_truncated_file(tmp_path, keep):
    path = tmp_path / "m.safetensors"
    registry.save_model(tiny(), path)
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:n])
    with pytest.raises(SepError, match="truncated|corrupt"):
        registry.load_file(path)


def test_tampered_tensor_bytes(tmp_path):
    path = tmp_path / "m.safetensors"
    registry.save_model(tiny(), path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(SepError, match="checksum"):
        registry.load_file(path)


def test_tampered_tensors_and_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    registry.save_model(tiny(), path)
    meta, tensors = registry.read_checkpoint(path)

    swapped = dict(tensors)
    swapped["decoder.weight"] = tensors["decoder.weight"] * 2
    save_file(swapped, tmp_path / "t1.safetensors", metadata=meta)
    renamed_meta = dict(meta, config=meta["config"].replace('"causal": false', '"causal": true'))
    assert renamed_meta["config"] != meta["config"]
    save_file(tensors, tmp_path / "t2.safetensors", metadata=renamed_meta)
    dropped = {k: v for k, v in tensors.items() if k != "encoder.weight"}
    save_file(dropped, tmp_path / "t3.safetensors", metadata=meta)
    for name in ("t1", "t2", "t3"):
        with pytest.raises(SepError, match="checksum"):
            registry.load_file(tmp_path / f"{name}.safetensors")


def test_consistent_but_wrong_weights_are_refused(tmp_path):
    """A well-formed file whose tensors do not fit its config."""
    tensors = {k: v.contiguous() for k, v in tiny().state_dict().items() if k != "encoder.weight"}
    meta = {
        "format": registry.FORMAT,
        "family": "convtasnet",
        "config": json.dumps(dict(TINY)),
        "sep_version": "0",
    }
    meta["digest"] = registry._digest(meta, tensors)
    save_file(tensors, tmp_path / "m.safetensors", metadata=meta)
    with pytest.raises(SepError, match="do not match"):
        registry.load_file(tmp_path / "m.safetensors")
    bad = dict(meta, family="nosuch")
    bad["digest"] = registry._digest(bad, tensors)
    save_file(tensors, tmp_path / "f.safetensors", metadata=bad)
    with pytest.raises(SepError, match="unknown model family 'nosuch'.*convtasnet"):
        registry.load_file(tmp_path / "f.safetensors")


def test_plain_safetensors_without_sep_metadata(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(SepError, match="not a sep model"):
        registry.load_file(tmp_path / "x.safetensors")


def test_digest_handles_scalars():
    meta = {"format": registry.FORMAT}
    a = registry._digest(meta, {"s": torch.tensor(1.5)})
    assert a != registry._digest(meta, {"s": torch.tensor(2.5)})
    assert a != registry._digest(meta, {"s": torch.tensor([1.5])})  # shape is part of it


# ----------------------------------------------------------------------------- names and shipped models


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A models folder with a non-causal and a causal tiny model."""
    monkeypatch.setenv("SEP_MODELS_DIR", str(tmp_path))
    a, c = tiny(), tiny(causal=True)
    sha = registry.save_model(a, tmp_path / "tiny.safetensors")
    write_card(
        tmp_path, "tiny", family="convtasnet", sample_rate=8000, n_src=2, causal=False,
        params=registry.count_parameters(a), quality={"si_snri": 12.5, "sdri": 13.0}, sha256=sha,
    )
    sha_c = registry.save_model(c, tmp_path / "tiny-causal.safetensors")
    # a minimal card: the listing reads the rest from the file's header
    write_card(tmp_path, "tiny-causal", quality={"si_snri": 20.0}, sha256=sha_c)
    return tmp_path, a, c


def test_load_shipped_by_name(shipped, mix):
    _, a, c = shipped
    assert torch.equal(registry.load_model("tiny")(mix), a(mix))
    assert torch.equal(registry.load_model("tiny-causal")(mix), c(mix))
    # the causal model scores higher but is not the default for offline use
    assert registry.default_model_name() == "tiny"


def test_a_shipped_name_wins_over_a_local_file_everywhere(shipped, tmp_path, monkeypatch):
    """--model, --init, a teacher and an ensemble member read the same file for a name."""
    from sepcli.models.ensemble import member_file
    from sepcli.training.config import _teacher_path

    folder, _, _ = shipped
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "tiny").write_bytes(b"not a model")  # a local file named like the shipped one
    want = folder / "tiny.safetensors"
    assert registry.model_file("tiny") == want
    assert Path(_teacher_path("tiny", base=work)) == want.resolve()
    assert member_file("tiny") == want
    assert registry.model_file("tiny.safetensors") == Path("tiny.safetensors")  # a path stays a path
    assert Path(_teacher_path("x.safetensors", base=work)) == work / "x.safetensors"


def test_shipped_checksum_is_verified(shipped):
    folder, _, _ = shipped
    card = json.loads((folder / "tiny.json").read_text())
    card["sha256"] = "0" * 64
    (folder / "tiny.json").write_text(json.dumps(card))
    with pytest.raises(SepError, match="checksum"):
        registry.load_model("tiny")


def test_unknown_name_lists_valid_ones(shipped):
    with pytest.raises(SepError) as err:
        registry.load_model("tinny")
    msg = str(err.value)
    assert "'tinny'" in msg and "did you mean 'tiny'" in msg
    assert "tiny-causal" in msg and "convtasnet" in msg
    with pytest.raises(SepError, match="without shipped weights"):
        registry.load_model("convtasnet-paper")
    with pytest.raises(SepError, match="unknown model family 'nope'; valid: .*convtasnet"):
        registry.build("nope")
    with pytest.raises(SepError, match="not found"):
        registry.load_model("missing/model.safetensors")


def test_list_models(shipped):
    folder, a, _ = shipped
    (folder / "broken.json").write_text("{not json")
    (folder / "broken.safetensors").write_bytes(b"junk")
    (folder / "orphan.json").write_text("{}")  # a card without weights is not listed
    (folder / "garbled.safetensors").write_bytes(b"\x00" * 64)
    write_card(folder, "garbled")
    rows = {r["name"]: r for r in registry.list_models()}
    assert "broken" not in rows and "orphan" not in rows
    assert "error" in rows["garbled"] and rows["garbled"]["kind"] == "shipped"
    t = rows["tiny"]
    assert (t["kind"], t["family"], t["sample_rate"], t["n_src"], t["causal"]) == (
        "shipped", "convtasnet", 8000, 2, False,
    )
    assert t["params"] == registry.count_parameters(a) and t["default"]
    assert t["quality"] == {"si_snri": 12.5, "sdri": 13.0}
    tc = rows["tiny-causal"]  # filled in from the header
    assert (tc["family"], tc["sample_rate"], tc["n_src"], tc["causal"]) == ("convtasnet", 8000, 2, True)
    assert tc["params"] == registry.count_parameters(a) and not tc["default"]
    paper = rows["convtasnet-paper"]
    assert paper["kind"] == "preset" and not paper["causal"] and 5.0e6 <= paper["params"] <= 5.2e6
    assert rows["convtasnet-paper-causal"]["causal"]
    assert rows["convtasnet"]["kind"] == "family"
    kinds = [r["kind"] for r in registry.list_models()]
    assert kinds == sorted(kinds, key=["shipped", "preset", "family"].index)


def test_models_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SEP_MODELS_DIR", str(tmp_path / "none"))
    assert registry.models_dir() == tmp_path / "none"
    assert registry.shipped_models() == {} and registry.default_model_name() is None
    monkeypatch.delenv("SEP_MODELS_DIR")
    assert registry.models_dir().name == "models" and os.path.isdir(registry.models_dir().parent / "sepcli")


def test_models_dir_of_an_installed_wheel(tmp_path, monkeypatch):
    # Installed from a wheel, sepcli/ sits in site-packages with no pyproject.toml
    # beside it; the weights are then under the prefix's share/sep/models.
    site = tmp_path / "site-packages" / "sepcli"
    site.mkdir(parents=True)
    monkeypatch.delenv("SEP_MODELS_DIR", raising=False)
    monkeypatch.setattr(registry, "__file__", str(site / "registry.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    assert registry.models_dir() == tmp_path / "venv" / "share" / "sep" / "models"
