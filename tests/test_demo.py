"""Tiny runs of the demo: every row trains and is scored, the rows get the same number of
optimiser steps, the CRF loss goes down, and the figure is written."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from expsoftmax import demo  # noqa: E402

TINY = ["--size", "16", "--train", "48", "--test", "8", "--batch", "8", "--width", "8",
        "--bp-iters", "5", "--no-progress"]  # fmt: skip


def test_tiny_run_of_every_row(tmp_path):
    out = demo.main(
        TINY + ["--steps", "50", "--crf-steps", "30", "--methods", "bp", "trw",
                "--out", str(tmp_path)]
    )  # fmt: skip
    rows = list(out["results"])
    assert rows[0].startswith("per-pixel")
    assert demo.POST in rows and "bp" in demo.crf_row("bp")
    assert {demo.crf_row("bp"), demo.crf_row("trw")} <= set(rows)
    assert not any("bp" in r for r in rows if r != demo.crf_row("bp"))
    for name, (acc, miou) in out["results"].items():
        assert 0 <= acc <= 1 and 0 <= miou <= 1
        per_class = out["per_class_iou"][name]
        assert per_class.shape == (demo.C,)
        assert np.isclose(np.nanmean(per_class), miou)
    # Fairness: the same total optimiser steps for every row, and the CRF rows share the
    # per-pixel row's cross-entropy pretraining.
    assert set(out["steps"].values()) == {50}
    pre = out["history"]["pretraining"]
    assert len(pre) == 20
    for method in ("bp", "trw"):
        losses = np.array(out["history"][demo.crf_row(method)])
        assert len(losses) == 50 and np.array_equal(losses[:20], pre)
        crf = losses[20:]
        assert np.array_equal(crf, out["history"][method])
        assert np.all(np.isfinite(crf)) and crf[-10:].mean() < crf[:10].mean()
    fig = out["figure"]
    assert fig.exists() and fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scores_from_a_confusion_matrix():
    truth = np.array([[0, 0, 1, 1], [2, 2, 0, 0]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 0]])
    conf = demo.confusion(pred, truth)
    acc, miou = demo.scores(conf)
    assert acc == 6 / 8
    # IoU: class 0: 3 / (4 + 4 - 3) = 0.6; class 1: 2 / 3; class 2: 1 / 2; others absent.
    per_class = demo.iou(conf)
    assert np.allclose(per_class[:3], [0.6, 2 / 3, 0.5]) and np.isnan(per_class[3:]).all()
    assert np.isclose(miou, (0.6 + 2 / 3 + 0.5) / 3)


def test_scenes_are_labelled_digit_strokes():
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    x, y = demo.make_scenes(20, 24, d.images, d.target, rng)
    assert x.shape == y.shape == (20, 24, 24) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1
    assert (y > 0).any(axis=(1, 2)).all() and y.max() <= 10
    # Labelled pixels are brighter than the background on average.
    assert x[y > 0].mean() > x[y == 0].mean() + 0.3


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        demo.main(["--crf-steps", "10", "--steps", "5"])
    with pytest.raises(SystemExit):
        demo.main(["--size", "8"])


def test_demo_runs_with_two_processes(tmp_path):
    out = demo.main(
        TINY + ["--steps", "4", "--crf-steps", "2", "--methods", "bp", "--world-size", "2",
                "--out", str(tmp_path)]
    )  # fmt: skip
    assert out == {}  # rank 0 prints and writes inside its own process
    assert (tmp_path / "segmentation.png").exists()
