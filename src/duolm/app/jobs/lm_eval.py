"""duolm lm-eval: EleutherAI's lm-evaluation-harness tasks on a model, through duolm's adapter.

The harness is an optional dependency (pip install 'duolm[lm_eval]') that takes seconds to
import, so it is imported inside cmd_lm_eval, where a missing install becomes one sentence."""
from __future__ import annotations

import time
from pathlib import Path

from omegaconf import OmegaConf

from duolm.app.api import Model
from duolm.app.loading import load_for_eval, model_path
from duolm.app.outputs import results_dir
from duolm.io.atomic import write_json
from duolm.io.hub_access import from_hub


def cmd_lm_eval(cfg, parts):
    """eval.checkpoint_path on lm-eval-harness tasks (lm_eval.tasks)."""
    c = cfg.lm_eval
    if not c.tasks:
        raise ValueError("duolm lm-eval needs lm_eval.tasks=[<task>, ...] (lm-eval's names, or YAML tasks in "
                         "lm_eval.include_path)")
    try:  # optional and heavy: see the module docstring
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import make_table

        from duolm.app.lm_eval_adapter import DuolmLM
    except ImportError:
        raise ValueError("duolm lm-eval needs the harness: pip install 'duolm[lm_eval]'") from None
    pre, device = load_for_eval(cfg)
    tasks = list(OmegaConf.to_container(c.tasks)) if not isinstance(c.tasks, str) else [c.tasks]
    if c.include_path and not Path(c.include_path).is_dir():
        raise ValueError(f"lm_eval.include_path={c.include_path} is not a folder of task YAML files")
    manager = TaskManager(include_path=c.include_path) if c.include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"lm_eval.tasks: {unknown[0]!r} is not a task lm-eval knows (nor one in lm_eval.include_path)")
    lm = DuolmLM(Model(pre, device=device), num_mc_samples=c.num_mc_samples, batch_size=c.batch_size, steps=c.steps)
    t0 = time.perf_counter()
    with from_hub(f"the data of lm_eval.tasks={tasks}", "run a local task instead: lm_eval.include_path=<a folder "
                  "with a task YAML whose dataset_kwargs.data_files name local files> (the README's my_task)"):
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=c.num_fewshot, limit=c.limit,
                                      task_manager=manager, log_samples=False, bootstrap_iters=1000)
    seconds = time.perf_counter() - t0
    print(make_table(out))
    path = Path(c.output or results_dir(cfg) / "lm_eval.json")
    write_json({"checkpoint": str(model_path(cfg)), "algo": pre.method.name, "noise": pre.config.get("noise"),
                "tasks": tasks, "seconds": seconds,
                "num_mc_samples": c.num_mc_samples, "results": out["results"]}, path)
    print(f"{len(tasks)} task(s) in {seconds:.1f} s -> {path}")
    return 0
