"""A tiny run of the demo: it trains (the CRF loss goes down) and writes its figure."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from expsoftmax import demo  # noqa: E402


def test_tiny_demo_trains_and_writes_a_figure(tmp_path):
    out = demo.main(
        ["--size", "16", "--train", "48", "--test", "8", "--steps", "30", "--crf-steps", "30",
         "--batch", "16", "--methods", "bp", "--bp-iters", "5", "--out", str(tmp_path)]
    )  # fmt: skip
    losses = np.array(out["history"]["bp"])
    assert losses[-10:].mean() < losses[:10].mean()
    fig = out["figure"]
    assert fig.exists() and fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for acc, miou in out["results"].values():
        assert 0 <= acc <= 1 and 0 <= miou <= 1


def test_png_writer_round_trip(tmp_path):
    import struct
    import zlib

    rgb = (np.arange(2 * 3 * 3) * 9 % 256).astype(np.uint8).reshape(2, 3, 3)
    p = tmp_path / "x.png"
    demo.write_png(p, rgb)
    data = p.read_bytes()
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (3, 2)
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41 : 41 + idat_len])
    rows = [raw[r * 10 + 1 : (r + 1) * 10] for r in range(2)]
    assert b"".join(rows) == rgb.tobytes()


def test_demo_runs_with_two_processes(tmp_path):
    out = demo.main(
        ["--size", "16", "--train", "16", "--test", "4", "--steps", "3", "--crf-steps", "3",
         "--batch", "4", "--methods", "bp", "--bp-iters", "3", "--world-size", "2",
         "--out", str(tmp_path)]
    )  # fmt: skip
    assert out == {}  # rank 0 prints and writes inside its own process
    assert (tmp_path / "segmentation.png").exists()
