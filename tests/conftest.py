"""Shared fixtures: the tiny structured corpus, tiny real video files, the real annotation files, one thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from structvl.data.knowledge.rules import extract_knowledge
from structvl.lab.synth import generate_corpus

from helpers import SHAPE_CAPTIONS, write_video

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


@pytest.fixture(scope="session")
def parsed():
    """The knowledge of SHAPE_CAPTIONS, parsed once per test session."""
    return extract_knowledge(SHAPE_CAPTIONS)
