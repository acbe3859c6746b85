"""trackers.py: what every tracker gets from the run, whichever one the project has: the rows
a resumed tracker run lacks, no step twice, and a failure that costs one warning."""

import logging
from types import SimpleNamespace

from {{ cookiecutter.package_name }}.trackers import GuardedTracker, numeric_row, tracker_states


class RecordingTracker:
    """A tracker run that already holds the rows of `steps`; records what it is given."""

    def __init__(self, steps=(), fail_on=None):
        self.rows, self.steps, self.fail_on, self.closed = [], set(steps), fail_on, False

    def write(self, row):
        if row["step"] == self.fail_on:
            raise ConnectionError("the server went away\nsecond line")
        self.rows.append(row)

    def logged_steps(self):
        return set(self.steps)

    def state(self):
        return {"run_id": "abc"}

    def close(self):
        self.closed = True


def opened(tracker, saved=None) -> GuardedTracker:
    module = SimpleNamespace(open_tracker=lambda *args: tracker)
    guarded = GuardedTracker("fake_log", saved)
    guarded.open(module, None, None, None, None, saved is not None)
    return guarded


def rows(*steps):
    return [{"epoch": index, "step": step, "val_acc": 0.5} for index, step in enumerate(steps)]


def test_a_resumed_tracker_gets_the_rows_it_lacks_and_no_step_twice():
    tracker = RecordingTracker(steps={8})  # row 16 was lost by the killed run's tracker
    guarded = opened(tracker, saved={"run_id": "abc"})
    guarded.catch_up(rows(8, 16))
    guarded.write(rows(8, 16, 24)[2])
    guarded.write(rows(8, 16, 24)[2])  # the same step again: already there
    assert [row["step"] for row in tracker.rows] == [16, 24]


def test_a_tracker_that_fails_costs_one_warning_and_keeps_its_state(project_log):
    tracker = RecordingTracker(fail_on=16)
    guarded = opened(tracker)
    guarded.write(rows(8)[0])
    assert guarded.state() == {"run_id": "abc"}
    guarded.write(rows(8, 16)[1])
    guarded.write(rows(8, 16, 24)[2])
    guarded.close()
    warnings = [record.getMessage() for record in project_log.records]
    assert len(warnings) == 1 and "the server went away" in warnings[0], warnings
    assert "second line" not in warnings[0]
    assert [row["step"] for row in tracker.rows] == [8] and not tracker.closed
    assert tracker_states([object(), guarded]) == {"fake_log": {"run_id": "abc"}}


def test_a_tracker_that_cannot_start_leaves_the_saved_state_for_the_next_resume(project_log):
    def refuse(*args):
        raise OSError("no route to host")

    guarded = GuardedTracker("fake_log", {"run_id": "abc"})
    guarded.open(SimpleNamespace(open_tracker=refuse), None, None, None, None, True)
    guarded.catch_up(rows(8))
    guarded.write(rows(8)[0])
    guarded.close()
    assert guarded.state() == {"run_id": "abc"}
    assert [r.levelno for r in project_log.records] == [logging.WARNING]


def test_metrics_csv_rows_read_back_as_numbers():
    text = {"epoch": "2", "step": "24", "val_acc": "0.875", "lr": "", "samples_per_s": "1e+03"}
    assert numeric_row(text) == {"epoch": 2, "step": 24, "val_acc": 0.875, "samples_per_s": 1000.0}
