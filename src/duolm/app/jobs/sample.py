"""duolm sample: generate from a model and write the samples as JSON (and image grids)."""
from __future__ import annotations

from pathlib import Path

from duolm.app.config import ConfigError
from duolm.app.fields import config_message
from duolm.app.loading import load_for_eval, model_path
from duolm.app.outputs import results_dir
from duolm.app.sampling_settings import sampling_settings
from duolm.data.instructions import reply_ids
from duolm.data.tokenizers import is_image
from duolm.evaluation.pictures import write_result_pictures
from duolm.io.atomic import write_json
from duolm.sampling.generate import generate
from duolm.sampling.request import request_from_settings


def cmd_sample(cfg, parts):
    pre, device = load_for_eval(cfg)
    sample_and_print(cfg, pre, device, out_dir=results_dir(cfg))
    return 0


def sample_output(given, folder: Path) -> tuple[str, Path | None]:
    """Where the samples go: sampling.output as given (the user chose it: replaced), else samples.json
    in the model's run folder, or, when an earlier one is there, the next free samples-<n>.json
    beside it, so a later command never silently replaces samples (nor the trajectory a `duolm
    view` page was made from). Returns (path, the earlier file kept or None)."""
    if given:
        return str(given), None
    first = folder / "samples.json"
    if not first.exists():
        return str(first), None
    n = 1
    while (folder / f"samples-{n}.json").exists():
        n += 1
    return str(folder / f"samples-{n}.json"), first


def sample_and_print(cfg, pre, device, checkpoint=None, out_dir=None) -> dict:
    """Sample from a loaded model (Pretrained) as cfg.sampling says, write the JSON (sampling.output,
    else out_dir/samples.json; out_dir: the folder of the run or model sampled, duolm.app.outputs)
    and for image models the PNG grid, print a summary and the first texts; returns the result."""
    s = cfg.sampling
    where = checkpoint or model_path(cfg)
    try:  # against the model that was loaded, not the config's algo and length
        request = request_from_settings(sampling_settings(s), method=pre.method, tokenizer=pre.tokenizer,
                                        length=pre.config["length"], num_classes=pre.num_classes)
    except ValueError as err:
        raise ConfigError(f"{config_message(err)} (the model at {where} is {pre.method.name}, length "
                          f"{pre.config['length']})") from None
    image = is_image(pre.tokenizer)
    res = generate(pre.method, pre.backbone, pre.tokenizer, request, device=device)
    res = {"checkpoint": str(where), **res}
    if s.get("chat"):  # each sample's reply: after the conversation, up to its first end of text
        start = len(request.spec.prefix)
        for smp in res["samples"]:
            smp["reply"] = pre.tokenizer.decode(reply_ids(pre.tokenizer, smp["ids"], start))
    if image:
        res["data"] = pre.config.get("data")  # which training images FID compares against
    out, kept = sample_output(s.output, Path(out_dir or cfg.run.dir))
    write_json(res, out)
    if kept:
        print(f"(kept the earlier {kept.name}; these samples are {Path(out).name}, beside it)")
    how = (f"{request.spec.predictor}, {res['steps']} steps, last step {res['noise_removal']}"
           if not pre.method.is_autoregressive else "autoregressive, KV cache")
    if "cache" in res:
        how += (f", {res['cache']['cached_calls']} of {res['cache']['cached_calls'] + res['cache']['denoiser_calls']} "
                f"denoiser calls saved by the cache")
    print(f"\n{res['num_samples']} samples ({how}) in {res['seconds']:.2f} s = "
          f"{res['seconds_per_sample']:.3f} s/sample, {res['tokens_per_second']:.0f} tokens/s -> {out}")
    if image:
        if s.grid:
            pictures = write_result_pictures(res, out)
            print("pictures: " + ", ".join(pictures.values()))
        return res
    for i, smp in enumerate(res["samples"][: s.print]):
        print(f"--- {'reply' if 'reply' in smp else 'sample'} {i}\n{smp.get('reply', smp['text'])}")
    return res
