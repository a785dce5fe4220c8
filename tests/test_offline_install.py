"""The GPU machine's install route works offline: no index, no build isolation, no dependencies
(the machine's own torch and triton stay), and the package then imports from this checkout."""

import subprocess
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_editable_install_without_index_or_build_isolation(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)  # sees torch, setuptools, pip
    py = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-index", "--no-build-isolation", "--no-deps", "-q", "-e", str(REPO)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "HOME": str(tmp_path)})
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    probe = ("import fastgauss, fastgauss.kernels, sys\n"
             "print(fastgauss.__file__); print(fastgauss.kernels.__file__); print(sys.prefix)")
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    package, kernels, prefix = out.stdout.split()
    assert Path(package) == REPO / "fastgauss" / "__init__.py"
    assert Path(kernels) == REPO / "kernels" / "__init__.py"
    assert Path(prefix) == env_dir
    site = next((env_dir / "lib").glob("python*/site-packages"))
    assert any(p.name.startswith("__editable__") or p.suffix == ".egg-link" or p.name.endswith(".pth")
               for p in site.iterdir()), "the install landed outside the venv"
