"""Shared fixtures: the tiny structured corpus, tiny real video files, the real annotation files, one thread, the
demo with tiny parts."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

from structvl.config import load_config
from structvl.data.knowledge.rules import extract_knowledge
from structvl.engine.pretrain import run_pretraining
from structvl.lab import demo
from structvl.lab.synth import generate_corpus
from structvl.lab.synth.corpus import structured_corpus

from helpers import SHAPE_CAPTIONS, TINY, write_video

# The real annotation files of six benchmarks (unmodified; see fixtures/realdata/README.md).
REALDATA = Path(__file__).resolve().parent / "fixtures" / "realdata"


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A 40-clip structured corpus at 32 px (plus 3 untrimmed videos), generated once per test session."""
    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, num_clips=40, num_untrimmed=3, size=32, num_frames=8, seed=3, workers=1,
                    progress=False)
    return root


@pytest.fixture
def make_video(tmp_path):
    def _make(name: str = "clip.mp4", **kwargs) -> Path:
        p = tmp_path / name
        write_video(p, **kwargs)
        return p

    return _make


@pytest.fixture(scope="session")
def realdata() -> Path:
    return REALDATA


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two threads that wait
    on each other's barriers run 10-100x slower whenever another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def stubbed_demo(monkeypatch):
    """The demo with tiny corpora (32 px, 40 clips), one pre-training step of a tiny model and a stub downstream
    suite; returns the overrides that make the model tiny. Its runs must stay in the test's process
    (`run_demo(..., isolate=False)`): a child process would not see the stubs."""
    def tiny_corpus(root, arguments, *args, **kwargs):
        tiny = {**arguments, "num_clips": 40, "size": 32, "num_frames": 8,
                "num_untrimmed": min(arguments["num_untrimmed"], 3)}
        return structured_corpus(root, tiny, *args, workers=1, progress=False, **kwargs)

    def downstream(run_dir, data, metrics):
        demo.write_json_merged(run_dir / "metrics.json", {"mcqa/accuracy": 40.0})
        return {"mcqa/accuracy": 40.0}

    monkeypatch.setattr(demo, "structured_corpus", tiny_corpus)
    monkeypatch.setattr(demo, "downstream_metrics", downstream)
    return TINY + ["train.max_steps=1", "train.checkpoint_every=0"]


@pytest.fixture(scope="session")
def parsed():
    """The knowledge of SHAPE_CAPTIONS, parsed once per test session."""
    return extract_knowledge(SHAPE_CAPTIONS)


# ---------------------------------------------------------------- timm / open_clip for the checkpoint-format tests
# They build the source models whose files structvl must load. PyPI has only CUDA builds of torchvision (which
# both import) for this CPU torch, and installing one beside it breaks `import transformers`; so the Makefile
# installs them with --no-deps into a folder beside the venv (`interop`), which only these tests put on sys.path.
INTEROP = Path(sys.prefix) / "interop"
_TORCHVISION_STUB_LIB = []


def _import_torchvision_without_ops() -> None:
    """A CUDA torchvision cannot load its C++ ops next to CPU torch, and then fails on import when it registers
    shapes for two of them (nms, qnms). Declaring those two ops first lets its pure-Python parts import."""
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_STUB_LIB.append(lib)  # the definitions live as long as the library object
        import torchvision  # noqa: F401


def import_interop(name: str):
    """timm or open_clip; skipped where they are not installed, except under CI, where that is a failure."""
    # On sys.path only while importing: processes spawned later (the two-rank tests) copy sys.path, and there
    # transformers would find this torchvision without the declarations above.
    sys.path.append(str(INTEROP))
    try:
        _import_torchvision_without_ops()
        return importlib.import_module(name)
    except ImportError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{name} is not installed (the Makefile's venv target puts it in {INTEROP}): {e}")
    finally:
        sys.path.remove(str(INTEROP))


@pytest.fixture(scope="session")
def open_clip_lib():
    return import_interop("open_clip")


@pytest.fixture(scope="session")
def timm_lib():
    return import_interop("timm")


@pytest.fixture(scope="session")
def search_run(tmp_path_factory) -> tuple[Path, Path]:
    """(corpus, run): 120 tiny structured clips (12 in the test split, 42 test captions) and a tiny model
    pre-trained on them for 100 steps of 16 clips in fp32 (seeded; ~1 CPU-minute): what the search tests embed,
    index and query. Captions fit its 32 tokens (the corpus's grammar keeps them within the demo's length)."""
    corpus, run = tmp_path_factory.mktemp("search_corpus"), tmp_path_factory.mktemp("search_run")
    generate_corpus(corpus, num_clips=120, num_untrimmed=0, size=32, num_frames=8, seed=3, workers=1, progress=False)
    cfg = load_config("demo", TINY + [f"data.root={corpus}", "train.max_steps=100", "train.batch_size=16",
                                      "train.checkpoint_every=0", "train.precision=fp32", "model.text.max_length=32"])
    run_pretraining(cfg, run)
    return corpus, run


# ---------------------------------------------------------------- a headless browser (the page tests)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Flags for a headless Chromium that starts nothing in the background and needs no GPU or sandbox.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


@pytest.fixture
def headless_chromium():
    """start(width, height) -> a selenium driver of Debian's chromium and chromium-driver, headless, its window
    that size; every driver started is quit after the test. Skipped where they are missing (.ci/run installs
    them; CI must not skip)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        from selenium import webdriver  # the dev extra, needed by the browser tests alone
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing and not os.environ.get("CI"):
        pytest.skip(f"browser test needs {missing} (apt-get install chromium chromium-driver; pip install selenium)")
    assert not missing, f"CI must install {missing}"
    drivers = []

    def start(width: int, height: int):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS + [f"--window-size={width},{height}"]:
            options.add_argument(flag)
        drivers.append(webdriver.Chrome(service=Service(CHROMEDRIVER), options=options))
        return drivers[-1]

    yield start
    for driver in drivers:
        driver.quit()
