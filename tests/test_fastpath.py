"""The ONNX Runtime fast path of the EfficientNet-Lite backbones: same vectors as torch on real
photos, the on-disk export cache (reused, damaged files exported again), runtime selection."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import caltech_subset

from models import onnx_runtime
from models.efficientnet import EfficientNetLite
from models.imageio import decode

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("onnxruntime")

CLASSES = ["airplanes", "Motorbikes", "sunflower", "watch", "Faces", "Leopards", "ant", "camera"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """16 real test photos (8 classes x 2)."""
    folder = caltech_subset(tmp_path_factory.mktemp("fastpath"), "test", CLASSES, 2)
    files = sorted(folder.rglob("*.jpg"))
    assert len(files) == 16
    return files


@pytest.fixture(scope="module")
def module_cache():
    """The test run's export cache (conftest's GRACEFUL_CACHE), which every other test of the
    backbones uses too: each backbone is exported once per run (the tests of exporting itself
    take a fresh_cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("GRACEFUL_RUNTIME", raising=False)
        yield Path(os.environ["GRACEFUL_CACHE"]) / "onnx"


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRACEFUL_CACHE", str(tmp_path))
    monkeypatch.delenv("GRACEFUL_RUNTIME", raising=False)
    return tmp_path / "onnx"


def batch_of(model, files) -> torch.Tensor:
    return torch.from_numpy(model.collate(
        [model.preprocess(decode(f.read_bytes(), model.info.image_size).image) for f in files]))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_onnxruntime_gives_torchs_vectors(variant, photos, module_cache):
    fast = EfficientNetLite(variant, runtime="onnxruntime")
    slow = EfficientNetLite(variant, runtime="torch")
    assert fast.runtime == fast.info.extra["runtime"] == "onnxruntime"
    assert slow.runtime == slow.info.extra["runtime"] == "torch"
    batch = batch_of(fast, photos)
    ref = slow.embed_batch(batch)
    got16 = fast.embed_batch(batch)
    got1 = np.concatenate([fast.embed_batch(batch[i:i + 1]) for i in range(len(batch))])
    for got in (got16, got1):
        assert got.dtype == np.float32 and got.shape == (16, fast.dim)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert cosines(got, ref).min() >= 0.9999
    # a channels_last batch (what callers of forward_features may pass) gives the same features
    cl = fast.forward_features(batch.contiguous(memory_format=torch.channels_last)).numpy()
    assert cosines(cl, fast.forward_features(batch).numpy()).min() >= 0.99999


def test_cache_is_reused_and_a_damaged_file_is_exported_again(fresh_cache, caplog):
    first = EfficientNetLite("lite0")  # auto
    assert first.runtime == "onnxruntime" and first._fast.exported
    files = list(fresh_cache.glob("*.onnx"))
    assert len(files) == 1 and files[0] == first._fast.path
    assert files[0].name.startswith("lite0-224-") and "ort" in files[0].name
    good = files[0].read_bytes()
    stamp = files[0].stat().st_mtime_ns

    second = EfficientNetLite("lite0")
    assert second.runtime == "onnxruntime" and not second._fast.exported
    assert files[0].stat().st_mtime_ns == stamp

    # a damaged file is exported again (tests/test_fastpath.py's tiny network: the same code,
    # OrtFeatures, without two more exports of lite0)
    files[0].write_bytes(good[: len(good) // 2])
    caplog.clear()
    again = EfficientNetLite("lite0")
    assert "unusable" in caplog.text and again.runtime == "onnxruntime" and again._fast.exported
    assert files[0].read_bytes() == good  # the export is deterministic
    assert list(fresh_cache.glob("*.onnx")) == files  # no stray temp files

    # a trust record that no longer matches torch: the torch path verifies and writes it again
    record = next(fresh_cache.glob("lite0-224-w*.trust.json"))
    kept = json.loads(record.read_text())
    record.write_text(json.dumps({**kept, "probe_features": [[0.5] * 1280] * 2}))
    again = EfficientNetLite("lite0")
    assert type(again._fast) is onnx_runtime.OrtFeatures and not again._fast.exported
    assert json.loads(record.read_text()) == kept


def test_a_damaged_export_is_exported_again(tmp_path, caplog):
    """Truncated (does not parse) or with NaN weights (parses; the probe against torch catches
    it): exported again, the same bytes, serving torch's features."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 7), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten()).eval()
    first = onnx_runtime.OrtFeatures("tiny", net, net, 32, folder=tmp_path, threads=1)
    assert first.exported and first.path is not None
    good = first.path.read_bytes()
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        want = net(torch.from_numpy(x)).numpy()
    middle = len(good) // 2  # inside the convolution's 37 KB of weights
    for damaged, why in ((good[:middle], "unusable"),
                         (good[:middle] + b"\xff" * 4096 + good[middle + 4096:],
                          "differs from torch")):
        first.path.write_bytes(damaged)
        caplog.clear()
        again = onnx_runtime.OrtFeatures("tiny", net, net, 32, folder=tmp_path, threads=1)
        assert why in caplog.text and again.exported
        assert first.path.read_bytes() == good
        assert cosines(again(x), want).min() >= 0.9999
    assert [p.name for p in tmp_path.glob("*.onnx")] == [first.path.name]


def test_graceful_runtime_torch_forces_torch(fresh_cache, monkeypatch):
    monkeypatch.setenv("GRACEFUL_RUNTIME", "torch")
    model = EfficientNetLite("lite0")
    assert model.runtime == model.info.extra["runtime"] == "torch" and model._fast is None
    assert not fresh_cache.exists()  # nothing exported
    monkeypatch.setenv("GRACEFUL_RUNTIME", "tensorrt")
    with pytest.raises(ValueError, match="GRACEFUL_RUNTIME"):
        EfficientNetLite("lite0")


def test_falls_back_to_torch_without_error(fresh_cache, monkeypatch):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "onnxruntime", None)  # "not installed"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # auto: silent
            assert EfficientNetLite("lite0").runtime == "torch"
        with pytest.warns(RuntimeWarning, match="not installed"):
            assert EfficientNetLite("lite0", runtime="onnxruntime").runtime == "torch"

    def broken(*a, **k):
        raise RuntimeError("unsupported operator")
    monkeypatch.setattr(onnx_runtime, "export_onnx", broken)
    with pytest.warns(RuntimeWarning, match="unsupported operator"):
        model = EfficientNetLite("lite0")
    assert model.runtime == model.info.extra["runtime"] == "torch"
    assert model.embed_batch(torch.zeros(1, 3, 224, 224)).shape == (1, 1280)


def test_compatible_heads_and_finetuned_backbones(module_cache, tmp_path, make_checkpoint):
    from models.checkpoint import load_checkpoint
    from models.compatible import HeadEmbedder
    from models.finetune import apply_backbone_state, tail_state

    make_checkpoint(tmp_path / "c.safetensors")
    meta, state = load_checkpoint(tmp_path / "c.safetensors")
    fast_backbone = EfficientNetLite("lite0", runtime="onnxruntime")
    fast = HeadEmbedder(fast_backbone, meta, state)
    slow = HeadEmbedder(EfficientNetLite("lite0", runtime="torch"), meta, state)
    assert fast.runtime == fast.info.extra["runtime"] == "onnxruntime"
    assert slow.runtime == "torch"
    x = torch.rand(4, 3, 224, 224) * 2 - 1
    assert cosines(fast.embed_batch(x), slow.embed_batch(x)).min() >= 0.9999

    # a fine-tuned copy gets its own export, never the shared backbone's session
    tuned_tensors = {k: v * 1.5 if v.is_floating_point() else v
                     for k, v in tail_state(fast_backbone.model, 1).items()}
    tuned = apply_backbone_state(fast_backbone, tuned_tensors)
    assert tuned.runtime == "onnxruntime" and tuned._fast is not fast_backbone._fast
    assert fast_backbone.runtime == "onnxruntime"
    with torch.inference_mode():
        want = torch.nn.functional.normalize(tuned._torch_features(x), dim=-1).numpy()
    assert cosines(tuned.embed_batch(x), want).min() >= 0.9999
    assert cosines(tuned.embed_batch(x), fast_backbone.embed_batch(x)).min() < 0.999


@pytest.mark.parametrize("spec", [
    {"type": "linear", "in_dim": 1280, "out_dim": 64},
    {"type": "linear", "in_dim": 1280, "out_dim": 64, "bias": False},
    {"type": "mlp", "in_dim": 1280, "out_dim": 96, "hidden": 256, "negative_slope": 0.1,
     "dropout": 0.2},
    {"type": "blend", "in_dim": 1280, "out_dim": 1280, "hidden": 128, "alpha": 0.3}],
    ids=["linear", "linear-no-bias", "leaky-mlp", "blend"])
def test_a_checkpoint_head_in_numpy_is_the_torch_head(spec, tmp_path):
    """Serving applies a checkpoint's head with numpy (models/head_numpy.py): through the
    checkpoint's float16 round trip, the same vectors as the torch module it was trained as."""
    from models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
    from models.head_numpy import NumpyHead
    from models.heads import build_head

    torch.manual_seed(1)
    head = build_head(spec).eval()
    meta = CheckpointMeta(name="h", backbone="lite0", dim=spec["out_dim"], space="lite0",
                          compatible_with=["lite0"], method="bct", head=spec, old_model="lite0")
    save_checkpoint(tmp_path / "h.safetensors", meta, head)
    _, state = load_checkpoint(tmp_path / "h.safetensors")
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in state.values())
    head.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})  # the stored halves
    x = torch.nn.functional.normalize(torch.randn(32, 1280), dim=-1)
    with torch.inference_mode():
        want = head(x).numpy()
    got = NumpyHead(spec, state)(x.numpy())
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5
    wrong = ({**spec, "out_dim": spec["out_dim"] + 1} if spec["type"] == "linear"
             else {**spec, "hidden": spec["hidden"] + 1})  # a blend's out_dim is its in_dim
    with pytest.raises(ValueError, match="spec says"):
        NumpyHead(wrong, state)


def test_a_checkpoint_serves_without_torch(photos, module_cache, tmp_path, make_checkpoint):
    """A compatible checkpoint on a verified backbone embeds in a fresh process (a CLI search,
    a Ray worker, the app) without importing torch, giving the torch path's vectors."""
    from models.checkpoint import load_checkpoint
    from models.compatible import HeadEmbedder

    make_checkpoint(tmp_path / "c.safetensors")
    slow = HeadEmbedder(EfficientNetLite("lite0", runtime="torch"),
                        *load_checkpoint(tmp_path / "c.safetensors"))
    want = slow.embed_batch(batch_of(slow, photos[:6]))
    EfficientNetLite("lite0")  # verified against torch: the trust record
    code = ("import sys, numpy as np\n"
            "from models.checkpoint import load_checkpoint\n"
            "from models.compatible import HeadEmbedder\n"
            "from models.efficientnet import EfficientNetLite\n"
            "from models.imageio import decode\n"
            "m = HeadEmbedder(EfficientNetLite('lite0'), *load_checkpoint(sys.argv[2]))\n"
            "ims = [decode(open(p, 'rb').read(), 224).image for p in sys.argv[3:]]\n"
            "np.save(sys.argv[1], m.embed_images(ims))\n"
            "print(m.runtime, 'torch' in sys.modules)\n")
    out = tmp_path / "v.npy"
    r = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "c.safetensors"),
                        *map(str, photos[:6])], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["onnxruntime", "False"]
    got = np.load(out)
    assert got.shape == (6, 64) and cosines(got, want).min() >= 0.9999


def test_processes_sharing_the_cache_export_once(tmp_path):
    """Processes (app processes, a job runner, test workers) needing the same model at once:
    one exports, the other waits for its file and reads it."""
    code = ("import sys, torch\n"
            "from models.onnx_runtime import OrtFeatures\n"
            "torch.manual_seed(0)\n"
            "net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1),\n"
            "                          torch.nn.Flatten()).eval()\n"
            "fast = OrtFeatures('tiny', net, net, 16, folder=sys.argv[1], threads=1)\n"
            "print(int(fast.exported))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-800:] for _, err in outs]
    assert sorted(out.strip() for out, _ in outs) == ["0", "1"]
    assert len(list(tmp_path.glob("tiny-16-*.onnx"))) == 1


def test_a_verified_backbone_serves_without_torch(photos, module_cache, tmp_path):
    """Once a process has verified a backbone's ONNX session against torch, later processes (a
    CLI search, an app, an ingest) open it from the trust record and never import torch."""
    slow = EfficientNetLite("lite0", runtime="torch")
    want = slow.embed_batch(batch_of(slow, photos))
    EfficientNetLite("lite0")  # verifies against torch and writes the record (or finds it)
    code = ("import sys, numpy as np\n"
            "from models.efficientnet import EfficientNetLite\n"
            "from models.imageio import decode\n"
            "m = EfficientNetLite('lite0')\n"
            "ims = [decode(open(p, 'rb').read(), 224).image for p in sys.argv[2:]]\n"
            "np.save(sys.argv[1], m.embed_images(ims))\n"
            "print(m.runtime, 'torch' in sys.modules, 'timm' in sys.modules)\n")
    out = tmp_path / "v.npy"
    r = subprocess.run([sys.executable, "-c", code, str(out), *map(str, photos)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["onnxruntime", "False", "False"]
    assert cosines(np.load(out), want).min() >= 0.9999

    home = tmp_path / "g"
    cli = [sys.executable, "-m", "search.cli", "--home", str(home)]
    env = {**os.environ, "GRACEFUL_THREADS": "1"}
    r = subprocess.run([*cli, "index", *map(str, photos[:4])], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-X", "importtime", *cli[1:], "search", str(photos[2]),
                        "-k", "1", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    hit = json.loads(r.stdout)["results"][0]
    assert hit["score"] > 0.999
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:")}
    assert "onnxruntime" in imported and not imported & {"torch", "timm", "torchvision", "pandas"}
