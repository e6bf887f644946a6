"""The wheel holds every subpackage and data file under the one import name `memfit`, and nothing
generic at top level (a subpackage missing from pyproject's `packages` works in an editable install
and is absent from the wheel)."""
from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = out.glob("memfit-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


@pytest.mark.slow
def test_wheel_contents(wheel_names):
    tops = {n.split("/")[0] for n in wheel_names}
    assert tops == {"memfit", *(t for t in tops if t.endswith(".dist-info"))}
    for source_dir, package in (("engine", "memfit/engine"), ("cli", "memfit/cli"), ("rules", "memfit/rules"),
                                ("schemas", "memfit/schemas"), ("engine/model/catalogue", "memfit/engine/model/catalogue"),
                                ("engine/integrations/keys", "memfit/engine/integrations/keys")):
        for f in (ROOT / source_dir).iterdir():
            if f.suffix in (".py", ".yaml", ".json", ".txt") and f.is_file():
                assert f"{package}/{f.name}" in wheel_names, f"{source_dir}/{f.name} missing from the wheel"


@pytest.mark.slow
def test_entry_point_declared(wheel_names):
    assert any(n.endswith("entry_points.txt") for n in wheel_names)
