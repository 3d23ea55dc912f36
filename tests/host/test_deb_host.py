"""`make deb`'s build (lab/build-deb.sh): a lintian-clean package with the files,
dependencies, conffile and maintainer scripts the README promises, whose
entry points load the vendored libraries. Installing, upgrading and purging it
on a booted system is tests/system (make test-system)."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("dpkg-buildpackage", "dh", "dh_python3", "lintian"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: lab/setup.sh installs the packaging tools")
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run([str(REPO / "lab" / "build-deb.sh"), "--lintian", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = out / f"offloadd_{VERSION}_all.deb"
    assert path.is_file(), sorted(out.iterdir())
    return path


def _field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_control_fields(deb: Path) -> None:
    assert _field(deb, "Version") == VERSION
    assert _field(deb, "Architecture") == "all"
    depends = {d.strip().split(" ")[0] for d in _field(deb, "Depends").split(",")}
    assert {"python3", "python3-nftables", "python3-systemd", "nftables", "conntrack",
            "procps"} <= depends
    assert not {"python3-pyroute2", "python3-prometheus-client"} & depends


def test_contents(deb: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True,
                             text=True, check=True).stdout
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    for path in ("/usr/sbin/offloadd", "/usr/sbin/offloadctl",
                 "/lib/systemd/system/offloadd.service",
                 "/usr/lib/modules-load.d/offloadd.conf", "/usr/lib/sysctl.d/60-offloadd.conf",
                 "/etc/offloadd/offloadd.toml",
                 "/usr/share/man/man8/offloadd.8.gz", "/usr/share/man/man8/offloadctl.8.gz",
                 "/usr/share/man/man5/offloadd.toml.5.gz",
                 "/usr/share/bash-completion/completions/offloadctl",
                 "/usr/share/bash-completion/completions/offloadd",
                 "/usr/share/doc/offloadd/examples/offloadd.rules.yml",
                 "/usr/share/doc/offloadd/examples/offloadd.json",
                 "/usr/lib/offloadd/offloadd/cli/run.py",
                 "/usr/lib/offloadd/vendor/pyroute2/__init__.py",
                 "/usr/lib/offloadd/vendor/prometheus_client/__init__.py"):
        assert path in paths, f"{path} not in the package"
    # Nothing in the system's site-packages, no byte code (py3compile makes it).
    assert not [p for p in paths if "dist-packages" in p or "site-packages" in p]
    assert not [p for p in paths if p.endswith(".pyc") or "__pycache__" in p]


def test_conffile_and_maintainer_scripts(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "--control", str(deb), str(tmp_path)], check=True)
    assert (tmp_path / "conffiles").read_text().split() == ["/etc/offloadd/offloadd.toml"]
    for script in ("postinst", "prerm", "postrm"):
        subprocess.run(["sh", "-n", str(tmp_path / script)], check=True)
    postinst = (tmp_path / "postinst").read_text()
    # Disabled on install; restarted on upgrade only if it runs.
    assert "deb-systemd-helper enable" in postinst  # only if it was enabled before
    assert "deb-systemd-invoke try-restart 'offloadd.service'" in postinst
    assert "deb-systemd-invoke start" not in postinst
    assert not (tmp_path / "preinst").exists() or "stop" not in (tmp_path / "preinst").read_text()


def test_entry_points_load_the_vendored_libraries(deb: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(root)], check=True)
    for name, module in (("offloadd", "run"), ("offloadctl", "ctl")):
        script = (root / "usr/sbin" / name).read_text().replace(
            '"/usr/lib/offloadd', f'"{root}/usr/lib/offloadd')
        wrapper = tmp_path / name
        wrapper.write_text(script)
        out = subprocess.run(["/usr/bin/python3", "-I", str(wrapper), "--version"],
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"{name} {VERSION}", (module, out)
    probe = ("import sys; sys.path[0:0] = [sys.argv[1], sys.argv[1] + '/vendor'];"
             "import pyroute2, prometheus_client, offloadd;"
             "print(pyroute2.__file__, prometheus_client.__file__, offloadd.__file__)")
    lib = root / "usr/lib/offloadd"
    files = subprocess.run(["/usr/bin/python3", "-I", "-c", probe, str(lib)],
                           capture_output=True, text=True, check=True).stdout.split()
    assert [Path(f).is_relative_to(lib) for f in files] == [True, True, True], files
