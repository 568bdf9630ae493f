"""`duolm view`: a self-contained page that plays each sample's denoising, checked in headless Chromium."""
import base64
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from said_as import raises_said_as

import duolm
from duolm.evaluation.trajectory_page import page_data, write_page
from duolm.sampling import SamplerSpec
from duolm.sampling.generate import GenerationRequest, generate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                                              "(scripts/test.sh installs Debian's chromium)")


def _chromium(*args, timeout=120):
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--enable-logging=stderr", "--v=0", *args], capture_output=True, text=True, timeout=timeout)
    return run


def _page_title(url: str) -> tuple[str, str]:
    run = _chromium("--virtual-time-budget=10000", "--dump-dom", url)
    assert run.returncode == 0, run.stderr[-2000:]
    start = run.stdout.index("<title>") + len("<title>")
    return run.stdout[start:run.stdout.index("</title>")], run.stdout, run.stderr


@pytest.fixture(scope="module")
def text_result():
    m = duolm.load("builtin:duo-bigtxt-dcd", device="cpu")
    return generate(m.method, m.pretrained.backbone, m.tokenizer, GenerationRequest(SamplerSpec(steps=8),
                    length=m.length, num_samples=3, batch_size=3, seed=0, trajectory=True, predictions=True),
                    progress=False)


def test_a_trajectory_is_recorded_at_every_step(text_result):
    traj = text_result["trajectory"]
    assert traj["steps"] == list(range(10))  # the prior draw, 8 updates, the noise-removal call
    assert len(traj["ids"]) == 10 and len(traj["ids"][0]) == 3
    assert traj["ids"][-1] == [s["ids"] for s in text_result["samples"]]  # the last frame is the sample
    assert all(str(i) in traj["tokens"] for frame in traj["ids"] for row in frame for i in row)
    # the model's most likely x_0 from each frame: what its denoiser gives on that frame
    m = duolm.load("builtin:duo-bigtxt-dcd", device="cpu")
    from duolm.sampling import SamplingModel
    from duolm.sampling.grids import linear_grid

    den = SamplingModel.from_method(m.method, m.pretrained.backbone).denoiser
    grid = linear_grid(8, 1e-3)
    for k in (0, 4, 8):
        x = torch.tensor(traj["ids"][k])
        alpha = m.method.schedule(grid[k].reshape(1)).alpha.expand(3)
        assert den(x, alpha).argmax(-1).tolist() == traj["predictions"][k]
    assert traj["predictions"][-1] is None and len(traj["predictions"]) == 10


@needs_chromium
def test_the_page_plays_every_step_without_errors_and_ends_on_the_sample(text_result, tmp_path):
    page = write_page(text_result, tmp_path / "samples.html")
    assert "http://" not in page.read_text() and "https://" not in page.read_text()  # nothing fetched
    title, _, stderr = _page_title(page.as_uri() + "#selftest")
    assert title == "selftest ok: 10 frames", title
    assert "Uncaught" not in stderr and "CONSOLE" not in stderr, stderr[-2000:]
    # the last step shows the sample's final tokens
    title, dom, _ = _page_title(page.as_uri() + "#last")
    tokens = text_result["trajectory"]["tokens"]
    final = "".join(tokens[str(i)] for i in text_result["samples"][0]["ids"])
    assert ">frame 9 / 9 (step 9)<" in dom
    shown = dom[dom.index('id="text-0"'):]
    shown = "".join(part.split("<", 1)[0] for part in shown.split(">")[1:])  # the spans' text, in order
    assert shown.startswith(final.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
    shot = tmp_path / "last.png"
    run = _chromium("--window-size=1100,700", f"--screenshot={shot}", page.as_uri() + "#last")
    assert run.returncode == 0 and shot.stat().st_size > 5000
    pixels = torch.from_numpy(np.asarray(Image.open(shot).convert("L"), dtype=np.float32))
    assert pixels.std() > 10  # text on a page, not a blank screenshot


@needs_chromium
def test_an_image_trajectory_plays_as_pictures(tmp_path):
    image = {"type": "pixels", "levels": 17, "channels": 1, "image_size": 8, "num_classes": 10}
    g = torch.Generator().manual_seed(0)
    frames = [torch.randint(0, 18, (2, 64), generator=g).tolist() for _ in range(5)]  # 17 is the mask
    result = {"algo": "mdlm", "steps": 4, "image": image, "trajectory": {"steps": list(range(5)), "ids": frames},
              "samples": [{"ids": frames[-1][0], "label": 3}, {"ids": frames[-1][1], "label": None}]}
    page = write_page(result, tmp_path / "images.html")
    title, _, stderr = _page_title(page.as_uri() + "#selftest")
    assert title == "selftest ok: 5 frames", title
    assert len(page_data(result)["frames"][0]) == 2
    png = page_data(result)["frames"][0][0].split(",", 1)[1]
    assert Image.open(io.BytesIO(base64.b64decode(png))).size == (96, 96)  # 8 px digits at 12x: at least 96 px


HOSTILE = ["<!--<script>", "</script><script>document.title='ran: script'</script>",
           "<img src=x onerror=\"document.title='ran: onerror'\">", " & ", "\u2028", "\u2029", "]]>", "\\"]


def test_embedded_data_has_no_markup_characters():
    tokens = {str(i): t for i, t in enumerate(HOSTILE)}
    result = {"algo": "duo", "steps": 2, "samples": [{"ids": [0, 1, 2]}],
              "trajectory": {"steps": [0, 1], "ids": [[[3, 4, 5]], [[0, 1, 2]]], "tokens": tokens}}
    from duolm.evaluation.trajectory_page import inert_json

    data = inert_json(page_data(result))
    for ch in "<>&\u2028\u2029":
        assert ch not in data
    assert json.loads(data) == page_data(result)  # the same value, written inertly


@needs_chromium
def test_a_page_of_hostile_token_strings_runs_its_selftest_and_none_of_the_data(tmp_path):
    tokens = {str(i): t for i, t in enumerate(HOSTILE)}
    ids = list(range(len(HOSTILE)))
    frames = [[ids[::-1], ids], [ids, ids[::-1]]]
    result = {"algo": "duo", "steps": 2, "samples": [{"ids": ids}, {"ids": ids[::-1]}],
              "trajectory": {"steps": [0, 1], "ids": frames, "tokens": tokens, "mask_id": None}}
    page = write_page(result, tmp_path / "hostile.html")
    title, dom, stderr = _page_title(page.as_uri() + "#selftest")
    assert title == "selftest ok: 2 frames", title  # the script ran; nothing in the data did
    assert "ran:" not in title and "<img src=" not in dom.split("</script>")[-1]
    title, dom, _ = _page_title(page.as_uri() + "#last")
    assert title == "duolm samples"
    # every hostile string is shown as text, escaped by the DOM, not parsed
    assert "&lt;!--&lt;script&gt;" in dom and "&lt;img src=x onerror=" in dom


def test_a_samples_file_without_a_trajectory_gets_one_sentence(tmp_path):
    with raises_said_as("sampling.trajectory=true"):
        page_data({"samples": [{"ids": [1], "text": "a"}]})
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"samples": [{"ids": [1], "text": "a"}]}))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for path, message in ((plain, "has no trajectory to show"), (bad, "is not a samples JSON"),
                          (tmp_path / "none.json", "no such samples file")):
        run = subprocess.run([sys.executable, "-m", "duolm", "view", str(path)], capture_output=True, text=True)
        assert run.returncode == 1 and message in run.stderr and "Traceback" not in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1


def test_the_legend_names_what_bos_and_eos_read_as(text_result):
    """The built-in model writes its BOS / EOS as '|'; the page's legend says so."""
    data = page_data(text_result)
    assert data["markers"] == text_result["document_markers"] and "|" in data["markers"]
    html = write_page(text_result, Path(tempfile.mkdtemp()) / "legend.html").read_text()
    assert 'id="markers"' in html and "start / end of a text (BOS / EOS)" in html
