from __future__ import annotations

from pathlib import Path

import pytest

import tests.fakes  # noqa: F401 -- registers the test-only methods
from vos import present
from vos.__main__ import main
from vos.runner import run_methods
from vos.specs import MethodSpec
from vos.synthetic import moving_shapes
from vos.video import open_clip, write_mp4

PRESENTER = Path(present.__file__)


@pytest.fixture
def bundle_root(tmp_path):
    synthetic = moving_shapes(4, (48, 64))
    source = write_mp4(synthetic.frames, tmp_path / "shapes.mp4", fps=4)
    clip = open_clip(source)
    specs = [MethodSpec("fake_copy"), MethodSpec("fake_fail")]
    run_methods(clip, synthetic.masks[0], specs, tmp_path / "runs" / "shapes", device="cpu")
    return tmp_path / "runs"


def test_bundle_loading(bundle_root):
    bundles = present.find_bundles(bundle_root)
    assert len(bundles) == 1
    bundle = bundles[0]
    assert bundle.name == "shapes" and bundle.num_frames == 4 and bundle.video is not None
    rows = bundle.table()
    assert [r["status"] for r in rows] == ["ok", "failed"]
    image = present.grid_image(bundle, 1, ["fake_copy", "fake_fail"])
    assert image is not None and image.ndim == 3
    assert bundle.mask("fake_copy", 3).shape == (48, 64)


def test_bad_folders(tmp_path):
    with pytest.raises(present.BundleError, match="holds no run bundle"):
        present.find_bundles(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(present.BundleError, match="not valid JSON"):
        present.find_bundles(tmp_path)


def test_present_command_rejects_a_non_bundle(tmp_path, capsys):
    assert main(["present", str(tmp_path)]) == 2
    assert "no run bundle" in capsys.readouterr().err


def test_streamlit_page_renders(bundle_root, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(present.RUN_DIR_ENV, str(bundle_root))
    app = AppTest.from_file(str(PRESENTER), default_timeout=60).run()
    assert not app.exception, app.exception
    assert app.title[0].value == "shapes"
    assert len(app.dataframe) == 1
    assert any("synthetic failure" in e.value for e in app.error)
    app.slider[0].set_value(3).run()
    assert not app.exception
