"""The app as a public Space: no server paths from users, no session folders left behind, a disk quota, plain-text
API errors, a time budget, and eight users at once (docs/robustness.md lists every case)."""

from __future__ import annotations

import concurrent.futures
import json
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

import tests.fakes  # noqa: F401 -- registers the fake_* methods
from pages import compare
from pages import prompting as pr
from pages import results as rs
from tests.test_app import centre_of, launched_app, tiny_files
from vos import masks as vmasks
from vos import runner
from vos import weights as vweights
from vos.specs import MethodSpec


@pytest.fixture(autouse=True)
def _sessions_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv(pr.SESSIONS_ENV, str(tmp_path / "sessions"))
    monkeypatch.delenv(compare.LOCAL_WEIGHTS_ENV, raising=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("tiny"))


def session_folders(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir()] if root.exists() else []


# --------------------------------------------------------------------------------------------------------------
# Weights: no server paths


@pytest.mark.parametrize("typed", ["/etc/shadow", "/", "/usr", "~/.ssh", "weights.pth", "/no/such/file"])
def test_typed_weights_never_open_or_probe_a_server_path(typed, monkeypatch):
    def check(spec: str, **_) -> str:
        if vweights.spec_kind(spec) == vweights.LOCAL:
            pytest.fail(f"the path {spec} was looked at")
        return spec

    monkeypatch.setattr(runner, "check_weights_spec", check)
    info = tests.fakes.CopyFirstMask.info
    with pytest.raises(vweights.BadWeightsSpec, match="does not open paths on the server") as caught:
        compare.method_weights(info, typed, None, Path("/tmp"))
    same = str(caught.value).split(": ", 1)[1]
    with pytest.raises(vweights.BadWeightsSpec) as other:  # an existing and a missing file read the same
        compare.method_weights(info, "/no/such/file", None, Path("/tmp"))
    assert str(other.value).split(": ", 1)[1] == same
    for text in (typed, f"fake_copy={typed}", f"hub,fake_copy={typed}"):
        with pytest.raises(vweights.BadWeightsSpec, match="does not open paths on the server"):
            compare.api_weights(text)


def test_hub_random_hf_and_uploads_are_accepted_and_the_owner_can_allow_paths(tmp_path, monkeypatch):
    info = tests.fakes.CopyFirstMask.info
    assert compare.api_weights("hub,fake_copy=random") == ["hub", "fake_copy=random"]
    assert compare.api_weights("fake_copy=hf://owner/repo/file.pth") == ["fake_copy=hf://owner/repo/file.pth"]
    upload = tmp_path / "mine.pth"
    upload.write_bytes(b"x")
    assert compare.method_weights(info, "", str(upload), tmp_path) == str(upload)
    monkeypatch.setenv(compare.LOCAL_WEIGHTS_ENV, "1")  # what `python app.py --allow-local-weights` sets
    assert compare.method_weights(info, str(upload), None, tmp_path) == str(upload.absolute())


def test_run_json_given_to_users_shows_no_server_paths(tiny, tmp_path):
    clip = pr.start_session(tiny["clip"], pr.Limits()).clip()
    request = rs.RunRequest(specs=[MethodSpec("fake_copy")], device="cpu", weights="random", ground_truth=None)
    out = tmp_path / "sessions" / "x" / "runs" / "r"
    rs.run_comparison(clip, tiny["masks"][0], request, out)
    assert str(tmp_path) in (out / "run.json").read_text()  # the server's own copy keeps them (run --from)
    files = rs.downloads(rs.load_view(out), tmp_path / "downloads")
    with zipfile.ZipFile(files.bundle) as archive:
        text = archive.read("r/run.json").decode()
    assert "/tmp" not in text and str(tmp_path) not in text
    assert json.loads(text)["clip"]["source"] == "tiny.mp4"
    assert rs.without_server_paths("looked in /root/.cache/vos/a.pth; frame 3/8") == "looked in a.pth; frame 3/8"


# --------------------------------------------------------------------------------------------------------------
# Session folders: removed after API calls, bounded in total


def test_sessions_past_the_disk_quota_go_oldest_first_and_an_upload_larger_than_it_is_refused(tmp_path, tiny):
    import os

    root = tmp_path / "sessions"
    root.mkdir()
    for age, name in enumerate(("newest", "middle", "oldest")):
        folder = root / name
        folder.mkdir()
        (folder / "data").write_bytes(b"\0" * 400_000)
        os.utime(folder, (1e9 - age * 1000, 1e9 - age * 1000))
    pr.make_room(root, 300_000, quota=1_200_000)  # 1.2 MB used: the oldest goes, then 1.1 MB fit
    assert sorted(p.name for p in session_folders(root)) == ["middle", "newest"]
    with pytest.raises(pr.VideoError, match=r"more than the 1 MB this server keeps for all sessions.*VOS_SESSIONS_MB"):
        pr.make_room(root, 2_000_000, quota=1_000_000)


def test_the_api_endpoints_remove_their_session_folder_after_success_and_failure(tiny, tmp_path):
    with gr.Blocks():
        page = compare.ComparePage().build()
    root = tmp_path / "sessions"
    x, y = centre_of(tiny["masks"][0], 1)
    prompt = page.api_prompt(tiny["clip"], json.dumps([{"clicks": [[x, y, 1]]}]))
    path = next(prompt)
    assert Path(path).exists() and len(session_folders(root)) == 1  # still there while Gradio copies the file
    assert next(prompt, None) is None and session_folders(root) == []
    with pytest.raises(gr.Error, match="The objects give an empty mask"):
        list(page.api_prompt(tiny["clip"], "[]"))
    assert session_folders(root) == []
    with pytest.raises(gr.Error, match="does not open paths on the server"):
        list(page.api_compare(tiny["clip"], tiny["mask"], "fake_copy", "", "", "cpu", 0, "/etc/shadow", None))
    files, summary = next(
        run := page.api_compare(tiny["clip"], tiny["mask"], "fake_copy", "", "", "cpu", 0, "random", None)
    )
    assert summary["methods"][0]["status"] == "ok" and str(tmp_path) not in json.dumps(summary)
    assert next(run, None) is None and session_folders(root) == []
    with pytest.raises(gr.Error, match="fp16 is not supported on the CPU"):  # the API's precision, refused first
        list(page.api_compare(tiny["clip"], tiny["mask"], "fake_copy", "", "", "cpu", 0, "random", None, "fp16"))
    assert session_folders(root) == []


def test_api_errors_arrive_as_plain_text_and_the_page_s_as_html(tiny):
    with gr.Blocks():
        page = compare.ComparePage().build()
    with pytest.raises(gr.Error) as caught:
        list(page.api_prompt(tiny["clip"], '[{"clicks": [["a", 1]]}]'))
    assert '["a", 1]' in caught.value.message and "&quot;" not in caught.value.message
    with pytest.raises(gr.Error) as caught:
        page.on_upload("/dev/zero")
    assert "not a regular file" in caught.value.message


def test_a_run_past_its_time_budget_is_stopped_and_says_why(tiny, tmp_path):
    clip = pr.start_session(tiny["clip"], pr.Limits()).clip()
    specs = [MethodSpec("fake_copy", options={"delay": 0.2}), MethodSpec("fake_unsup")]
    request = rs.RunRequest(specs=specs, device="cpu", weights="random", time_budget_s=0.3)
    result = rs.run_comparison(clip, tiny["masks"][0], request, tmp_path / "run")
    assert [r.status for r in result.records] == [runner.CANCELLED, runner.CANCELLED]
    assert all("passed its 0.3-second budget ($VOS_RUN_SECONDS)" in r.error for r in result.records)


# --------------------------------------------------------------------------------------------------------------
# Eight users at once


LOAD_SESSIONS = 8


@pytest.mark.slow
def test_eight_concurrent_api_sessions_all_get_correct_results_and_leave_no_files(tiny, tmp_path):
    """Eight gradio_client sessions on 127.0.0.1 at once, each prompting and comparing on a tiny clip with test-only
    random-weight methods: every result is right, and no session folder remains. Bounded: 8 sessions, 240 s."""
    from gradio_client import Client, handle_file

    server = tmp_path / "server"
    server.mkdir()
    x, y = centre_of(tiny["masks"][0], 2)
    objects = json.dumps([{"clicks": [[x, y, 1]]}])

    with launched_app(server) as url:

        def one_user(index: int) -> tuple[np.ndarray, dict, list[str]]:
            client = Client(url, verbose=False, download_files=str(tmp_path / f"user{index}"))
            mask = client.predict(handle_file(str(tiny["clip"])), objects, api_name="/prompt_mask")
            files, summary = client.predict(
                handle_file(str(tiny["clip"])),
                handle_file(str(tiny["mask"])),
                "fake_copy,fake_unsup",
                "",
                f"fake_copy.shift={index % 3}",
                "cpu",
                0,
                "random",
                None,
                api_name="/compare",
            )
            return vmasks.read_palette_png(mask), summary, files

        with concurrent.futures.ThreadPoolExecutor(LOAD_SESSIONS) as pool:
            futures = [pool.submit(one_user, i) for i in range(LOAD_SESSIONS)]
            results = [f.result(timeout=240) for f in futures]
        for index, (prompt, summary, files) in enumerate(results):
            assert prompt[round(y), round(x)] == 1 and prompt.max() == 1
            statuses = {m["key"]: m["status"] for m in summary["methods"]}
            assert statuses == {"fake_copy": runner.OK, "fake_unsup": runner.OK}
            copy = next(m for m in summary["methods"] if m["key"] == "fake_copy")
            assert copy["config"]["options"]["shift"] == index % 3
            with zipfile.ZipFile(files[1]) as archive:
                name = next(n for n in archive.namelist() if n.endswith("fake_copy/00007.png"))
                (tmp_path / f"last{index}.png").write_bytes(archive.read(name))
            last = vmasks.read_palette_png(tmp_path / f"last{index}.png")
            expected = np.roll(tiny["masks"][0], (index % 3) * 7, axis=1)
            np.testing.assert_array_equal(last, expected)
        assert session_folders(server / "sessions") == []


def test_uploaded_ids_and_marked_objects_past_255_are_refused(tiny, tmp_path):
    session = pr.start_session(tiny["clip"], pr.Limits())
    mask = np.zeros((96, 128), np.uint8)
    mask[:10, :10] = 250
    session = pr.set_uploaded_mask(session, vmasks.write_palette_png(mask, tmp_path / "mask.png"))
    for index in range(6):  # ids 251..256
        session = pr.add_object(pr.click(session, 20 + 15 * index, 60, pr.INCLUDE))
    with pytest.raises(pr.vprompts.PromptError, match="ids go up to 250, which leaves no room for 6 more objects"):
        pr.label_map(session)
