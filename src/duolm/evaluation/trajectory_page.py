"""One self-contained HTML page that plays how samples form, step by step (`duolm view samples.json`).

The samples JSON must hold a trajectory (`duolm sample sampling.trajectory=true`): x_t of the
first samples at each recorded step. The page embeds everything (no network, no server): a slider
and a play button move through the steps; tokens that changed at the shown step are marked and
masks are drawn as blocks. Image models' frames are embedded as PNGs.

Opening the page with ``#last`` shows the final step; ``#selftest`` moves the slider through
every step, checks what is drawn against the data and writes the verdict into the page's title
(the tests run it in headless Chromium). With `sampling.trajectory_predictions=true` each frame
also shows, in green, the model's most likely x_0 from it.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from duolm.data.tokenizers import load_tokenizer
from duolm.errors import SettingError
from duolm.evaluation.pictures import upscale_for
from duolm.io.atomic import atomic_write_text

# Characters that could end the script element, open an HTML comment or end a JavaScript line
# inside a string literal (U+2028/U+2029), written as JSON escapes: the embedded data stays a
# plain JavaScript value whatever the tokens are (a model can write `<!--` and `</script>`).
_INERT = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def inert_json(value) -> str:
    """JSON for `value` that is safe to paste into an HTML <script> element."""
    text = json.dumps(value, ensure_ascii=False)
    return text.translate(str.maketrans(_INERT))

def page_data(result: dict) -> dict:
    """What the page's script reads, from a samples JSON with a trajectory."""
    traj = result.get("trajectory")
    if not traj or not traj.get("ids"):
        raise SettingError("the samples file has no trajectory to show; sample with `GenerationRequest.trajectory`=true "
                         "(every step) or `GenerationRequest.trajectory`=<number of steps>")
    data = {"steps": traj["steps"], "algo": result.get("algo"), "sampler": (result.get("sampler") or {}).get("predictor"),
            "num_steps": result.get("steps")}
    if "image" in result:
        data["kind"] = "image"
        data["frames"] = [[_png_data_uri(result["image"], row) for row in frame] for frame in traj["ids"]]
        data["labels"] = [s.get("label") for s in result["samples"][:len(traj["ids"][0])]]
        return data
    data["kind"] = "text"
    data["frames"] = traj["ids"]
    data["tokens"] = traj.get("tokens", {})
    data["mask_id"] = traj.get("mask_id")
    data["final_ids"] = [s["ids"] for s in result["samples"][:len(traj["ids"][0])]]
    data["predictions"] = traj.get("predictions")  # the denoiser's most likely x_0 from each frame, or None
    data["markers"] = result.get("document_markers") or []  # what BOS / EOS read as (the legend names them)
    return data


def _png_data_uri(image_config: dict, ids: list[int]) -> str:
    import numpy as np
    from PIL import Image

    tok = load_tokenizer(image_config)
    ids = np.asarray(ids)
    masked = ids >= tok.levels
    pixels = tok.decode_pixels(ids).transpose(1, 2, 0)  # (H, W, C) uint8
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, -1)
    m = masked.reshape(tok.channels, tok.image_size, tok.image_size).any(0)
    pixels[m] = (255, 0, 255)  # a mask (of any channel) is drawn magenta
    side = tok.image_size * upscale_for(tok.image_size)  # at least 96 px wide, whole pixels
    img = Image.fromarray(np.ascontiguousarray(pixels)).resize((side, side), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_page(result: dict, path, title: str = "duolm samples") -> Path:
    """Write the page for `result` (a samples JSON dict) to `path`."""
    text = PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", inert_json(page_data(result)))
    path = Path(path)
    atomic_write_text(path, text)
    return path


PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font: 15px/1.5 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
header { display: flex; gap: 1em; align-items: center; flex-wrap: wrap; position: sticky; top: 0; background: #fff;
         padding: .5em 0; border-bottom: 1px solid #ddd; }
#slider { width: 28em; } #step { font-variant-numeric: tabular-nums; min-width: 10em; }
.sample { border: 1px solid #ddd; border-radius: 6px; padding: .6em .8em; margin: .8em 0; }
.sample h3 { margin: 0 0 .3em; font-size: 13px; color: #666; font-weight: normal; }
.text { font-family: ui-monospace, monospace; white-space: pre-wrap; word-break: break-word; }
.tok.changed { background: #ffe08a; }
.tok.mask { color: #bbb; }
.images img { margin: 4px; image-rendering: pixelated; border: 1px solid #ddd; }
.legend { color: #666; font-size: 13px; }
.pred { font-family: ui-monospace, monospace; white-space: pre-wrap; word-break: break-word; color: #2a6;
        border-top: 1px dashed #ccc; margin-top: .4em; padding-top: .3em; }
</style></head>
<body>
<header>
  <button id="play">play</button>
  <input id="slider" type="range" min="0" value="0" step="1">
  <span id="step"></span>
  <span class="legend"><span class="tok changed">changed at this step</span> · <span class="tok mask">&#9617;</span> mask<span id="markers"></span></span>
</header>
<div id="meta" class="legend"></div>
<div id="samples"></div>
<script>
"use strict";
const DATA = __DATA__;
const MASK = "\u2591";
const slider = document.getElementById("slider");
const stepLabel = document.getElementById("step");
const box = document.getElementById("samples");
const n = DATA.frames.length;
if (DATA.markers && DATA.markers.length) {
  document.getElementById("markers").textContent =
    " · " + DATA.markers.map(m => JSON.stringify(m)).join(" ") + " start / end of a text (BOS / EOS)";
}
slider.max = String(n - 1);
document.getElementById("meta").textContent =
  (DATA.algo || "") + (DATA.sampler ? " · " + DATA.sampler : "") + (DATA.num_steps ? " · " + DATA.num_steps + " steps" : "") +
  " · " + n + " recorded frames";

function tokenText(id) {
  if (DATA.mask_id !== null && DATA.mask_id !== undefined && id === DATA.mask_id) return MASK;
  const t = DATA.tokens[String(id)];
  return t === undefined ? MASK : t;
}

function frameText(f, s) { return DATA.frames[f][s].map(tokenText).join(""); }

function render(f) {
  box.replaceChildren();
  stepLabel.textContent = "frame " + f + " / " + (n - 1) + " (step " + DATA.steps[f] + ")";
  const rows = DATA.frames[f];
  for (let s = 0; s < rows.length; s++) {
    const div = document.createElement("div");
    div.className = "sample";
    const h = document.createElement("h3");
    h.textContent = "sample " + s + (DATA.labels && DATA.labels[s] !== null && DATA.labels[s] !== undefined ? " · class " + DATA.labels[s] : "");
    div.appendChild(h);
    if (DATA.kind === "image") {
      const wrap = document.createElement("div");
      wrap.className = "images";
      const img = document.createElement("img");
      img.src = rows[s];
      img.alt = "sample " + s + " at frame " + f;
      wrap.appendChild(img);
      div.appendChild(wrap);
    } else {
      const text = document.createElement("div");
      text.className = "text";
      text.id = "text-" + s;
      const prev = f > 0 ? DATA.frames[f - 1][s] : null;
      rows[s].forEach((id, i) => {
        const span = document.createElement("span");
        span.className = "tok" + (prev && prev[i] !== id ? " changed" : "") + (tokenText(id) === MASK ? " mask" : "");
        span.textContent = tokenText(id);
        text.appendChild(span);
      });
      div.appendChild(text);
      if (DATA.predictions && DATA.predictions[f]) {
        const pred = document.createElement("div");
        pred.className = "pred";
        pred.id = "pred-" + s;
        pred.title = "the model's most likely x_0 from this step";
        pred.textContent = DATA.predictions[f][s].map(tokenText).join("");
        div.appendChild(pred);
      }
    }
    box.appendChild(div);
  }
}

slider.addEventListener("input", () => render(Number(slider.value)));
let timer = null;
document.getElementById("play").addEventListener("click", () => {
  if (timer) { clearInterval(timer); timer = null; return; }
  if (Number(slider.value) >= n - 1) slider.value = "0";
  timer = setInterval(() => {
    const f = Number(slider.value) + 1;
    if (f >= n) { clearInterval(timer); timer = null; return; }
    slider.value = String(f);
    render(f);
  }, Math.max(30, 3000 / n));
});

function selftest() {
  const problems = [];
  for (let f = 0; f < n; f++) {
    slider.value = String(f);
    slider.dispatchEvent(new Event("input"));
    if (!stepLabel.textContent.startsWith("frame " + f + " ")) problems.push("label at " + f);
    if (DATA.kind === "text") {
      for (let s = 0; s < DATA.frames[f].length; s++) {
        const shown = document.getElementById("text-" + s).textContent;
        if (shown !== frameText(f, s)) problems.push("text of sample " + s + " at frame " + f);
        const changed = document.querySelectorAll("#text-" + s + " .changed").length;
        const expected = f === 0 ? 0 : DATA.frames[f][s].filter((id, i) => id !== DATA.frames[f - 1][s][i]).length;
        if (changed !== expected) problems.push("changes of sample " + s + " at frame " + f);
        if (DATA.predictions && DATA.predictions[f]) {
          const p = document.getElementById("pred-" + s);
          if (!p || p.textContent !== DATA.predictions[f][s].map(tokenText).join("")) problems.push("prediction of sample " + s + " at frame " + f);
        }
      }
    } else if (document.querySelectorAll(".images img").length !== DATA.frames[f].length) {
      problems.push("images at frame " + f);
    }
  }
  if (DATA.kind === "text") {  // the last frame is the sample itself
    for (let s = 0; s < DATA.final_ids.length; s++) {
      if (JSON.stringify(DATA.frames[n - 1][s]) !== JSON.stringify(DATA.final_ids[s])) problems.push("final ids of sample " + s);
    }
  }
  document.title = problems.length ? "selftest failed: " + problems.slice(0, 5).join("; ") : "selftest ok: " + n + " frames";
}

window.addEventListener("error", (e) => { document.title = "page error: " + e.message; });
const hash = window.location.hash;
const start = hash === "#last" ? n - 1 : 0;
slider.value = String(start);
render(start);
if (hash === "#selftest") selftest();
</script>
</body></html>
"""
