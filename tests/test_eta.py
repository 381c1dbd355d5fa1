"""The ETA: pure arithmetic over the clock readings it is given (no wall clock here)."""

import pytest

from ganflow.eta import Eta, checks_left, duration
from ganflow.training import due


@pytest.mark.parametrize("step,steps,every", [(0, 7000, 1000), (0, 7050, 1000), (1500, 7050, 1000), (7000, 7000, 1000),
                                              (0, 20, 0), (3, 20, 7), (0, 5, 10)])
def test_checks_left_counts_what_the_loop_runs(step, steps, every):
    assert checks_left(step, steps, every) == sum(due(s, every, s == steps) for s in range(step + 1, steps + 1))


def test_the_warm_up_is_left_out_of_the_rate_and_counted_in_the_total():
    eta = Eta(steps=1000, eval_every=250, warmup=10)
    eta.update(5, 4.0)  # the first steps pay for the capture (or compile): 0.8 s a step
    assert eta.left() is None and eta.text() == "ETA: measuring"
    eta.update(10, 5.0)  # warm-up over at step 10, after 5 s
    assert eta.left() is None  # nothing after it timed yet
    eta.update(15, 5.5)
    assert eta.left() is None  # fewer than `warmup` steps after it
    eta.update(110, 15.0)  # 100 steps in 10 s: 0.1 s a step
    assert eta.step_seconds() == pytest.approx(0.1)
    assert eta.left() == pytest.approx(890 * 0.1)  # 4 FID checks still due, not timed yet: 0 s each
    assert "4 FID checks (not timed yet)" in eta.text()
    eta.update(300, 36.0, eval_seconds=2.0, checks=1)  # a check took 2 s: it is not step time
    assert eta.step_seconds() == pytest.approx((36.0 - 5.0 - 2.0) / 290)
    assert eta.left() == pytest.approx(700 * eta.step_seconds() + 3 * 2.0)
    assert eta.text().endswith(f"{duration(36.0 + eta.left())} in all")


def test_a_resumed_run_counts_from_where_it_resumed():
    eta = Eta(steps=100, start=90, warmup=10)
    eta.update(95, 1.0)
    eta.update(100, 2.0)  # fewer steps left than the warm-up: the whole rest is warm-up
    assert eta.left() is None
    eta = Eta(steps=200, start=100, warmup=10, eval_every=50)
    eta.update(110, 3.0)
    eta.update(120, 4.0, eval_seconds=0.0)
    assert eta.left() == pytest.approx(80 * 0.1)  # 2 checks (150, 200), not timed
    eta = Eta(steps=115, start=100, warmup=10)
    eta.update(110, 3.0)
    eta.update(114, 3.4)
    assert eta.left() is None
    eta.update(115, 3.5)
    assert eta.left() == 0.0  # the last step: done
    assert checks_left(120, 200, 50) == 2


def test_duration_reads_well():
    assert [duration(s) for s in (0, 59.4, 61, 3599, 3600, 7620)] == ["0 s", "59 s", "1 min 01 s", "59 min 59 s",
                                                                        "1 h 00 min", "2 h 07 min"]
