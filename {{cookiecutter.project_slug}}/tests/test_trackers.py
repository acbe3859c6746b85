"""trackers.py: what every tracker gets from the run, whichever one the project has: the rows
a resumed tracker run lacks, no step twice, and a failure that costs one warning."""

import logging
from types import SimpleNamespace

import pytest

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


class FailingRun(RecordingTracker):
    """A tracker run whose store fails at `fail_on` with `error`; records how it ended."""

    def __init__(self, error, reachable_at_end=True):
        super().__init__(fail_on=8)
        self.error, self.reachable_at_end, self.ended = error, reachable_at_end, None

    def write(self, row):
        if row["step"] == self.fail_on:
            raise self.error
        self.rows.append(row)

    def end_failed(self):
        if not self.reachable_at_end:
            raise self.error
        self.ended = "FAILED"


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (RuntimeError("(sqlite3.OperationalError) database is locked\n[SQL: ...]"), "locked"),
        (RuntimeError("attempt to write a readonly database"), "read-only"),
        (PermissionError(13, "Permission denied"), "read-only"),
        (OSError(30, "Read-only file system"), "read-only"),
        (ConnectionError("the server went away"), "cannot be reached"),
        (RuntimeError("API request failed: Max retries exceeded with url"), "cannot be reached"),
    ],
)
def test_a_failed_tracker_says_what_failed_and_its_run_ends_failed(project_log, error, said):
    tracker = FailingRun(error)
    guarded = opened(tracker)
    for row in rows(4, 8, 12):
        guarded.write(row)
    guarded.close()
    (warning,) = [record.getMessage() for record in project_log.records]
    assert said in warning and "training goes on" in warning and "\n" not in warning
    assert tracker.ended == "FAILED" and not tracker.closed


def test_a_tracker_out_of_reach_at_the_end_costs_a_second_line_at_most(project_log):
    tracker = FailingRun(ConnectionError("refused"), reachable_at_end=False)
    guarded = opened(tracker)
    guarded.write(rows(4, 8)[1])
    guarded.close()
    lines = [record.getMessage() for record in project_log.records]
    assert len(lines) == 2 and "could not be marked failed" in lines[1]


def test_a_tracker_library_logs_nothing_of_its_own_while_it_fails(project_log):
    """Its own logger's traceback is silenced; the project's one line is not."""
    library = logging.getLogger("some_tracker_library")

    def open_tracker(*args):
        library.error("a traceback of 60 lines")
        raise RuntimeError("database is locked")

    module = SimpleNamespace(open_tracker=open_tracker, LIBRARY_LOGGERS=("some_tracker_library",))
    project_log.set_level(logging.INFO)
    GuardedTracker("fake_log", None).open(module, None, None, None, None, False)
    messages = [record.getMessage() for record in project_log.records]
    assert messages == [
        "tracker fake failed to start (its store is locked by another process), training goes "
        "on without it: database is locked"
    ]
    assert library.level == logging.NOTSET  # as it was
