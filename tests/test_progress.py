"""Progress in a log: a few plain lines (every 10% or 30 s, and the end), a tqdm bar only on a screen."""
import io

from duolm.io import progress as progress_module
from duolm.io.progress import LineProgress, progress_bar


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_log_gets_a_line_per_tenth_and_one_at_the_end(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_module.time, "perf_counter", clock)
    out = io.StringIO()
    bar = progress_bar(total=400, desc="training", unit="step", stream=out)
    assert isinstance(bar, LineProgress)  # a StringIO is not a terminal
    for _ in range(399):
        clock.now += 0.01
        bar.update(1)
    bar.set_postfix({"loss": "2.000"})
    bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue() and all(lines)  # 40, 80, ..., 400: no blank lines
    assert lines[0].startswith("training: 40/400 step (10%), 0:00 elapsed, 0:04 left")
    assert lines[-1] == "training: 400/400 step (100%), 0:04 elapsed, loss=2.000"


def test_a_slow_run_also_gets_a_line_every_30_seconds_and_no_more(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_module.time, "perf_counter", clock)
    out = io.StringIO()
    bar = LineProgress(total=1000, desc="eval", stream=out)
    for _ in range(50):  # 5% in 100 s: three lines by time, none by progress
        clock.now += 2.0
        bar.update(1)
    assert len(out.getvalue().splitlines()) == 3
    bar.close()  # and the last count
    assert out.getvalue().splitlines()[-1].startswith("eval: 50/1000 it (5%), 1:40 elapsed, 31:40 left")


def test_iterating_closes_the_bar_even_when_the_loop_stops_early(monkeypatch):
    out = io.StringIO()
    for i in progress_bar(range(20), desc="sampling", stream=out):
        if i == 4:
            break
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("sampling: 2/20 it (10%)") and lines[-1].startswith("sampling: 4/20 it (20%)")
    quiet = io.StringIO()
    assert list(progress_bar(range(3), disable=True, stream=quiet)) == [0, 1, 2] and quiet.getvalue() == ""
