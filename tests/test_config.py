"""The installation reports what it is and runs; the portable kernels agree with the AVX2
ones."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

import expsoftmax as es


def test_config_reports_the_build_the_simd_path_and_the_threads():
    c = es.config()
    assert c["version"] == es.__version__
    assert c["build_profile"] in ("release", "debug")
    assert c["simd"] in ("avx512", "avx2", "baseline")
    assert c["simd"] == "baseline" or c["cpu_avx2"]
    assert c["threads"] == es.get_num_threads() >= 1
    assert c["available_cores"] >= 1 and c["numpy"] == np.__version__
    try:
        es.set_num_threads(1)
        assert es.config()["thread_source"] == "set_num_threads"
        assert es.config()["threads"] == 1
    finally:
        es.set_num_threads(0)
    out = io.StringIO()
    es.show_config(out)
    text = out.getvalue()
    assert "version" in text and es.__version__ in text and "simd" in text


def test_version_is_the_installed_distributions():
    try:
        installed = metadata.version("expsoftmax")
    except metadata.PackageNotFoundError:
        pytest.skip("expsoftmax is imported from a source tree, not installed")
    assert es.__version__ == installed


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_thread_source_follows_rayon_num_threads():
    r = _run("import json, expsoftmax as es; print(json.dumps(es.config()))", RAYON_NUM_THREADS="1")
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)
    assert c["threads"] == 1 and c["thread_source"] == "RAYON_NUM_THREADS"


def test_an_unknown_simd_choice_is_refused():
    r = _run("import expsoftmax", EXPSOFTMAX_SIMD="avx1024")
    assert r.returncode != 0 and "EXPSOFTMAX_SIMD" in r.stderr


def test_the_spin_setting_is_reported_and_bad_values_are_refused():
    assert es.config()["spin_us"] == int(os.environ.get("EXPSOFTMAX_SPIN_US", "1000"))
    show = "import expsoftmax as es; print(es.config()['spin_us'])"
    for value, want in (("0", 0), (" 250 ", 250), ("1000000", 1000000), ("", 1000)):
        r = _run(show, EXPSOFTMAX_SPIN_US=value)
        assert r.returncode == 0, r.stderr
        assert int(r.stdout) == want
    for bad in ("-1", "1e3", "abc", "1000001", "\u00b2"):
        r = _run("import expsoftmax", EXPSOFTMAX_SPIN_US=bad)
        assert r.returncode != 0 and "EXPSOFTMAX_SPIN_US" in r.stderr, bad


# Every kernel with an AVX2 copy: the batch-major chain kernel (f32 exp), per-item forest
# sum-product and max-product, grid BP (both schedules; flooding at small C takes the
# one-pass kernel) and TRW in f32 and f64 storage, and the grid Gibbs sweep.
_WORKLOAD = """
import json, sys, warnings
import numpy as np
import expsoftmax as es
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
out = {"simd": es.config()["simd"]}
for dt in (np.float32, np.float64):
    ch = es.Graph.chain(30)
    sn = rng.normal(size=(16, 30, 7)).astype(dt)
    sh = rng.normal(size=(1, 7, 7)).astype(dt)
    se = rng.normal(size=(16, 29, 7, 7)).astype(dt)
    y = rng.integers(0, 7, (16, 30))
    loss, gn, ge = es.loss_and_grad(ch, sn, sh, y)
    r = es.infer(ch, sn, se)
    # C above the grouped kernel's: per-item tables exponentiated in one ranged pass.
    sw = rng.normal(size=(3, 30, 23)).astype(dt)
    tw = rng.normal(size=(3, 29, 23, 23)).astype(dt)
    wl, wn, we = es.loss_and_grad(ch, sw, tw, rng.integers(0, 23, (3, 30)))
    g = es.Graph.grid(12, 13)
    gn2 = rng.normal(size=(g.num_nodes, 5)).astype(dt)
    ge2 = rng.normal(size=(g.num_edges, 5, 5)).astype(dt)
    b = es.infer(g, gn2, ge2, method="bp", max_iter=20, damping=0.3)
    f = es.infer(g, gn2, ge2, method="bp", max_iter=20, damping=0.5, schedule="parallel")
    t = es.infer(g, gn2, ge2, method="trw", max_iter=20)
    k = es.infer(g, gn2, ge2, method="gibbs", num_samples=200, seed=1, ais_steps=0)
    for name, a in [("loss", loss), ("gn", gn), ("ge", ge), ("lz", r.log_z),
                    ("nm", r.node_marginals), ("dec", es.decode(ch, sn, se)),
                    ("bp", b.node_marginals), ("bplz", b.log_z), ("trw", t.log_z),
                    ("flood", f.node_marginals), ("floodlz", f.log_z),
                    ("gibbs", k.node_marginals), ("wl", wl), ("wn", wn), ("we", we)]:
        out[f"{dt.__name__}.{name}"] = np.asarray(a, dtype=np.float64).ravel().tolist()
json.dump(out, sys.stdout)
"""


def test_portable_and_avx2_kernels_agree():
    runs = {}
    for choice in ("auto", "avx2", "baseline"):
        r = _run(_WORKLOAD, EXPSOFTMAX_SIMD=choice)
        assert r.returncode == 0, r.stderr
        runs[choice] = json.loads(r.stdout)
    base, auto, avx2 = runs["baseline"], runs["auto"], runs["avx2"]
    assert base.pop("simd") == "baseline"
    simd = auto.pop("simd")
    capped = avx2.pop("simd")
    assert capped in ("avx2", "baseline") and simd in ("avx512", "avx2", "baseline")
    # The AVX-512 kernels are the AVX2 ones' operations on wider vectors: the same bits.
    assert auto == avx2
    if simd == "baseline":
        pytest.skip("this CPU has no AVX2: both runs took the portable path")
    for key, ref in base.items():
        # Same arithmetic in another vector width: rounding differences only. float32
        # results agree to 1e-5, float64 to 1e-10; decoded labels and Gibbs samples (same
        # random streams, same draw rule) exactly unless a rounding difference flips a draw.
        tol = 1e-5 if key.startswith("float32") else 1e-10
        a, b = np.asarray(auto[key]), np.asarray(ref)
        if key.endswith(("dec", "gibbs")):
            assert np.mean(a == b) > 0.99, key
        else:
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=key)
