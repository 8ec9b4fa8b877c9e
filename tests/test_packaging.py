"""Packaging: the sdist of a clean copy of the checkout carries every file a wheel build needs, its
metadata names the license, and a CPU-only wheel built from that sdist alone imports and computes
what the reference computes."""
import ast
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a fresh clone has that the sdist may use; build outputs and the large shipped data stay out.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "runs", "data", "results", "wheels", "*.egg-info",
    "__pycache__", "*.so", ".pytest_cache", ".benchmarks",
)


def _version() -> str:
    tree = ast.parse((ROOT / "alif_cuda" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return node.value.value
    raise AssertionError("alif_cuda/__init__.py assigns no __version__ literal")


VERSION = _version()
PREFIX = f"alif_cuda-{VERSION}"


def _run(cmd, cwd, env=None):
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed with exit code {done.returncode}\n"
        f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    )
    return done


def _build_env():
    """The environment of a CPU-only build: CI exports FORCE_CUDA=1, which contradicts it."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_CUDA", "TORCH_CUDA_ARCH_LIST")}
    env.update(ALIF_CUDA_CPU_ONLY="1", MAX_JOBS=str(os.cpu_count() or 1))
    return env


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    pytest.importorskip("build", reason="python -m build is needed (scripts/setup_env.sh installs it)")
    tmp = tmp_path_factory.mktemp("sdist")
    src = tmp / "src"
    # A copy, so no egg-info left in the checkout by an earlier install can add files to the
    # sdist that MANIFEST.in forgot (setuptools reuses an existing SOURCES.txt).
    shutil.copytree(ROOT, src, ignore=NOT_COPIED)
    _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp / "dist"), str(src)],
         cwd=tmp, env=_build_env())
    tarballs = list((tmp / "dist").glob("*.tar.gz"))
    assert [t.name for t in tarballs] == [f"{PREFIX}.tar.gz"], f"expected one {PREFIX}.tar.gz, got {tarballs}"
    return tarballs[0]


def _sdist_names(path):
    with tarfile.open(path) as tar:
        return {name[len(PREFIX) + 1:] for name in tar.getnames() if name.startswith(PREFIX + "/")}


def test_sdist_lists_every_source_and_header(sdist):
    names = _sdist_names(sdist)
    needed = {f"csrc/{p.relative_to(ROOT / 'csrc').as_posix()}"
              for pattern in ("*.h", "*.cuh", "*.cpp", "*.cu") for p in (ROOT / "csrc").rglob(pattern)}
    needed |= {f"alif_cuda/{p.name}" for p in (ROOT / "alif_cuda").glob("*.py")}
    needed |= {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "CITATION.cff",
               "docs/design.md"}
    assert {"csrc/alif_math.h", "csrc/taid_math.h", "csrc/cuda/alif_bwd_cuda_fp32.cu",
            "csrc/cuda/taid_launch_cuda.cu", "csrc/cuda/alif_cuda_kernels.cuh"} <= needed
    assert needed - names == set(), f"the sdist lacks {sorted(needed - names)}"
    unwanted = sorted(n for n in names if n.endswith(".so") or n.split("/")[0] in ("data", "runs", "models", "tests"))
    assert unwanted == [], f"the sdist should hold the library only, but has {unwanted}"


def test_sdist_metadata_names_the_license(sdist):
    with tarfile.open(sdist) as tar:
        pkg_info = tar.extractfile(f"{PREFIX}/PKG-INFO").read().decode()
    fields = [line.split(": ", 1) for line in pkg_info.splitlines() if ": " in line]
    assert ["Version", VERSION] in fields
    assert ["License-Expression", "MIT"] in fields, pkg_info[:1500]
    assert ["License-File", "LICENSE"] in fields, pkg_info[:1500]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_wheel_built_from_the_sdist_alone_runs(sdist, tmp_path):
    """pip builds a CPU-only wheel from nothing but the sdist (no checkout), and the wheel's
    alif_cuda, imported away from the checkout, matches its own reference (a CPU build: about a minute on two cores)."""
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
          str(sdist)], cwd=tmp_path, env=_build_env())
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "site")
    assert any(n.startswith("alif_cuda/_C") and n.endswith(".so") for n in names), names
    assert "alif_cuda/layers.py" in names
    assert f"{PREFIX}.dist-info/licenses/LICENSE" in names, names
    assert not any(n.startswith(("models/", "tests/", "csrc/")) for n in names), names

    check = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import torch
        import alif_cuda
        assert Path(alif_cuda.__file__).parent == Path(sys.argv[1]) / "alif_cuda", alif_cuda.__file__
        assert not alif_cuda.cuda_kernels_available()
        assert callable(alif_cuda.layers.TimeDistributed)
        torch.manual_seed(0)
        x = torch.randn(5, 3, 4, 6, dtype=torch.float64, requires_grad=True)
        tau = torch.full((4,), 0.4, dtype=torch.float64, requires_grad=True)
        v_th = torch.tensor(0.3, dtype=torch.float64)
        out, out_ref = alif_cuda.alif(x, tau, v_th), alif_cuda.alif_ref(x, tau, v_th)
        assert torch.equal(out, out_ref)
        weights = torch.randn_like(out)
        grads = torch.autograd.grad((out * weights).sum(), (x, tau))
        grads_ref = torch.autograd.grad((out_ref * weights).sum(), (x, tau))
        for g, g_ref in zip(grads, grads_ref):
            torch.testing.assert_close(g, g_ref)
        s, w = torch.randn(6, 2, 3, 5, 5, dtype=torch.float64), torch.randn(6, 6, dtype=torch.float64)
        torch.testing.assert_close(alif_cuda.taid(s, w), alif_cuda.taid_ref(s, w))
        print("wheel ok", out.sum().item())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    done = _run([sys.executable, "-c", check, str(tmp_path / "site")], cwd=tmp_path, env=env)
    assert "wheel ok" in done.stdout


def test_import_exposes_layers_and_one_version():
    """`import alif_cuda` alone gives alif_cuda.layers (a fresh interpreter, so no other test's
    import of alif_cuda.layers can make it pass), and the citation names the package's version."""
    done = _run([sys.executable, "-c", "import alif_cuda; print(alif_cuda.layers.TimeDistributed.__name__)"],
                cwd=ROOT)
    assert done.stdout.split() == ["TimeDistributed"]
    cff = (ROOT / "CITATION.cff").read_text()
    assert f"\nversion: {VERSION}\n" in cff
    assert ("title: \"When Spiking Neural Networks Meet Temporal Attention Image Decoding and Adaptive Spiking Neuron\""
            in cff)
