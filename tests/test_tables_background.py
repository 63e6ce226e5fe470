"""Table rows appended behind the pipeline (``core.tables.BackgroundAppends``), as
ExportToOMEROTable appends them in a one-process run: in order, bounded, failures raised
at the caller's next call, and every row written exactly once even when a batch's reply
was lost."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from cellprofiler_omero.core.errors import OmeroError
from cellprofiler_omero.core.model import ColumnKind, ColumnSpec, TableSchema, TableTarget
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.core.tables import BackgroundAppends, TableAppendFailed, TableWriter
from cellprofiler_omero.emulator import Emulator
from tests.conftest import run

SCHEMA = TableSchema("background.h5", (
    ColumnSpec("ImageNumber", ColumnKind.LONG), ColumnSpec("ObjectNumber", ColumnKind.LONG),
    ColumnSpec("Area", ColumnKind.DOUBLE)))
KEYS = ("ImageNumber", "ObjectNumber")
ROWS_PER_SET = 3


def image_set(number: int) -> dict[str, Any]:
    """The rows of image set ``number`` (three objects): Python lists for odd numbers,
    numpy arrays for even ones (as CellProfiler's measurements come), so batches mix
    both."""
    rows = {"ImageNumber": [number] * ROWS_PER_SET,
            "ObjectNumber": list(range(1, ROWS_PER_SET + 1)),
            "Area": [number + i / 10 for i in range(ROWS_PER_SET)]}
    if number % 2:
        return rows
    return {"ImageNumber": np.full(ROWS_PER_SET, number, dtype=np.int32),
            "ObjectNumber": np.arange(1, ROWS_PER_SET + 1, dtype=np.float64),
            "Area": np.asarray(rows["Area"], dtype=np.float32)}


@pytest.fixture
def small_batches(settings_for: Any) -> Iterator[SessionManager]:
    """Logged in as demo; batches of 10 rows; no retries (a dropped call fails)."""
    mgr = SessionManager(settings_for(tables__batch_rows=10, retry__budget_seconds=0))
    run(lambda: mgr.connect(user="demo", password="demo"))
    yield mgr
    run(mgr.close)


def table_rows(blitz: Any, file_id: int) -> list[tuple[int, int]]:
    """(ImageNumber, ObjectNumber) of every row, in the table's order; checks each
    row's Area is the one written for it."""
    import omero2pandas

    frame = omero2pandas.read_table(file_id=file_id, omero_connector=blitz())
    for number, obj, area in zip(frame["ImageNumber"], frame["ObjectNumber"],
                                 frame["Area"], strict=True):
        assert area == pytest.approx(number + (obj - 1) / 10, rel=1e-6)
    return list(zip(frame["ImageNumber"].tolist(), frame["ObjectNumber"].tolist(),
                    strict=True))


def expected(image_sets: int) -> list[tuple[int, int]]:
    return [(n, o) for n in range(1, image_sets + 1) for o in range(1, ROWS_PER_SET + 1)]


def test_rows_are_written_in_order_behind_the_caller_within_the_bound(
        small_batches: SessionManager, seeded: dict[str, Any], faults: Emulator,
        blitz: Any) -> None:
    writer = TableWriter(small_batches, TableTarget("Dataset", seeded["dataset"]), SCHEMA,
                         key_columns=KEYS)
    run(writer.open)
    appender = BackgroundAppends(writer, depth=2)
    # A slow server: each addData takes 300 ms, so batches pile up behind the caller.
    faults.set_faults(latency_ms=300, ops=["addData"])
    most_waiting = 0
    for number in range(1, 26):  # 75 rows: 7 full batches and a partial one
        appender.add_rows(image_set(number))
        most_waiting = max(most_waiting, appender.pending_batches)
    appender.flush()
    # The caller is free before the rows are on the server (the last batch is on its way).
    assert writer.rows_written < 75
    assert most_waiting <= 2  # never more than ``depth`` batches held behind the caller
    info = appender.close()
    faults.clear_faults()
    assert info.rows == 75
    assert table_rows(blitz, info.file_id) == expected(25)


def test_a_failed_batch_is_raised_at_the_next_call_and_resent_exactly_once(
        small_batches: SessionManager, seeded: dict[str, Any], faults: Emulator,
        blitz: Any) -> None:
    writer = TableWriter(small_batches, TableTarget("Dataset", seeded["dataset"]), SCHEMA,
                         key_columns=KEYS)
    run(writer.open)
    appender = BackgroundAppends(writer, depth=2)
    # The first addData is carried out but its reply is lost: the rows are on the server,
    # and the writer (retries off) sees a failure.
    faults.set_faults(drop_after=1, drop_after_reply=True, ops=["addData"])
    for number in range(1, 5):  # 12 rows: one full batch handed over, 2 rows buffered
        appender.add_rows(image_set(number))
    with pytest.raises(TableAppendFailed) as raised:
        appender.drain()
    failure = raised.value
    assert failure.table == SCHEMA.name
    assert failure.rows == 10 and failure.first_image_number == 1
    assert isinstance(failure.cause, OmeroError) and failure.__cause__ is failure.cause
    assert writer.rows_written == 0  # the writer does not count what it did not see
    faults.clear_faults()
    # The failure was raised once; the kept batch goes again with the later rows.
    for number in range(5, 8):
        appender.add_rows(image_set(number))
    info = appender.close()
    assert info.rows == 21
    assert table_rows(blitz, info.file_id) == expected(7)  # batch 1 not written twice


def test_a_failure_in_the_background_stops_the_next_image_set(
        small_batches: SessionManager, seeded: dict[str, Any], faults: Emulator,
        blitz: Any) -> None:
    writer = TableWriter(small_batches, TableTarget("Dataset", seeded["dataset"]), SCHEMA)
    run(writer.open)
    appender = BackgroundAppends(writer, depth=1)
    faults.set_faults(drop_after=1, ops=["addData"])  # dropped before the server acts
    for number in range(1, 5):  # the full batch goes behind the caller and fails
        appender.add_rows(image_set(number))
    # depth 1: handing over the next full batch waits for the failed one, then the
    # image set after that is refused with the failure.
    with pytest.raises(TableAppendFailed):
        for number in range(5, 12):
            appender.add_rows(image_set(number))
    refused_at = number
    faults.clear_faults()
    info = appender.close()
    # Every image set before the refused one is in the table once, in order.
    assert table_rows(blitz, info.file_id) == expected(refused_at - 1)


def test_a_missing_value_in_a_numpy_long_column_is_refused_on_arrival(
        small_batches: SessionManager, seeded: dict[str, Any]) -> None:
    writer = TableWriter(small_batches, TableTarget("Dataset", seeded["dataset"]), SCHEMA)
    writer.add_rows(image_set(2))
    bad = {**image_set(4), "ObjectNumber": np.array([1.0, np.nan, 3.0])}
    with pytest.raises(ValueError, match=r"Row 4 has no value in long column "
                                         r"'ObjectNumber'"):
        writer.add_rows(bad)
    batch, n = writer._take_batch()  # nothing of the refused image set was buffered
    assert n == ROWS_PER_SET and list(writer.wire_batch(batch)["ImageNumber"]) == [2, 2, 2]


def test_an_idle_sender_takes_a_partial_batch_without_waiting_for_a_full_one(
        small_batches: SessionManager, seeded: dict[str, Any], blitz: Any) -> None:
    writer = TableWriter(small_batches, TableTarget("Dataset", seeded["dataset"]), SCHEMA)
    run(writer.open)
    # By default a partial batch goes early from 1,000 rows (many rows per call); here
    # from 6, with batches of 10 rows.
    appender = BackgroundAppends(writer, early_rows=6)
    appender.add_rows(image_set(1))  # 3 rows: fewer than early_rows, kept
    assert writer._buffered == 3 and appender.pending_batches == 0
    appender.add_rows(image_set(2))  # 6 rows and nothing being sent: handed over now
    assert writer._buffered == 0
    info = appender.close()
    assert info.rows == 6
    assert table_rows(blitz, info.file_id) == expected(2)


def test_buffered_rows_keep_every_value_whatever_mix_of_types_the_image_sets_bring(
        small_batches: SessionManager, seeded: dict[str, Any]) -> None:
    # All Double (and all integer) columns of an image set are copied into the batch in
    # one step when they make one numeric array, else column by column: either way each
    # value lands in its own column and row, converted as the column's kind says.
    schema = TableSchema("mixed.h5", (
        ColumnSpec("ImageNumber", ColumnKind.LONG), ColumnSpec("Area", ColumnKind.DOUBLE),
        ColumnSpec("ObjectNumber", ColumnKind.LONG), ColumnSpec("Hit", ColumnKind.BOOL),
        ColumnSpec("Mean", ColumnKind.DOUBLE), ColumnSpec("Label", ColumnKind.STRING, size=8),
        ColumnSpec("Count", ColumnKind.DOUBLE)))
    writer = TableWriter(small_batches, TableTarget("Dataset", seeded["dataset"]), schema)
    writer.add_rows({  # numpy of assorted dtypes: the grouped copy
        "ImageNumber": np.array([1, 1], dtype=np.int32),
        "ObjectNumber": np.array([1, 2], dtype=np.uint8),
        "Area": np.array([1.5, 2.5], dtype=np.float32), "Mean": np.array([7, 8]),
        "Count": np.array([True, False]), "Hit": np.array([True, False]),
        "Label": ["a", "b"]})
    writer.add_rows({  # lists, a missing Double and a float-typed integer column
        "ImageNumber": [2, 2], "ObjectNumber": np.array([1.0, 2.0]),
        "Area": [None, 3.25], "Mean": [9, float("nan")], "Count": [4, 5],
        "Hit": [False, True], "Label": ["c", "dd"]})
    batch, n = writer._take_batch()
    columns = writer.wire_batch(batch)
    assert n == 4
    assert list(columns["ImageNumber"]) == [1, 1, 2, 2]
    assert list(columns["ObjectNumber"]) == [1, 2, 1, 2]
    np.testing.assert_array_equal(columns["Area"], [1.5, 2.5, np.nan, 3.25])
    np.testing.assert_array_equal(columns["Mean"], [7.0, 8.0, 9.0, np.nan])
    assert list(columns["Count"]) == [1.0, 0.0, 4.0, 5.0]
    assert columns["Hit"] == [True, False, False, True]
    assert columns["Label"] == ["a", "b", "c", "dd"]


def test_a_second_keyed_writer_adds_only_the_rows_the_table_lacks_asking_little(
        small_batches: SessionManager, seeded: dict[str, Any], emulator: Emulator,
        blitz: Any) -> None:
    # An analysis worker opens the run's table by its file id and writes image sets
    # another process may have written already (a retry, a restart).
    target = TableTarget("Dataset", seeded["dataset"])
    first = TableWriter(small_batches, target, SCHEMA, key_columns=KEYS)
    for number in (1, 2):
        run(lambda number=number: first.append(image_set(number)))
    info = run(first.close)
    worker = TableWriter(small_batches, target, SCHEMA, file_id=info.file_id,
                         key_columns=KEYS)
    run(worker.open)

    def batch_calls(numbers: tuple[int, ...]) -> dict[str, int]:
        before = emulator.call_counts()
        for number in numbers:
            worker.add_rows(image_set(number))
        run(worker.flush)
        # The table's calls only (a session's keep-alive may fall in between).
        return {op: n - before.get(op, 0) for op, n in emulator.call_counts().items()
                if n != before.get(op, 0) and op.startswith("Table.")}

    # Image set 2 is there already: its keys are found (their values read), the rest
    # sent; the column names are asked once, with the first batch.
    assert batch_calls((2, 3)) == {"Table.getHeaders": 1, "Table.getWhereList": 1,
                                   "Table.slice": 1, "Table.addData": 1}
    assert batch_calls((4,)) == {"Table.getWhereList": 1, "Table.addData": 1}
    assert worker.rows_written == 2 * ROWS_PER_SET
    assert run(worker.close).rows == 4 * ROWS_PER_SET
    assert table_rows(blitz, info.file_id) == expected(4)


def test_the_sender_makes_the_table_at_once_and_its_first_batch_takes_what_came_meanwhile(
        small_batches: SessionManager, seeded: dict[str, Any], faults: Emulator,
        blitz: Any) -> None:
    writer = TableWriter(small_batches, TableTarget("Dataset", seeded["dataset"]), SCHEMA)
    # A slow table service: making the table takes 400 ms, all behind the caller.
    faults.set_faults(latency_ms=400, ops=["newTable"])
    before = faults.call_counts()
    appender = BackgroundAppends(writer, early_rows=6)
    for number in (1, 2, 3):  # 9 rows, past early_rows: kept while the table is made
        appender.add_rows(image_set(number))
    assert writer._buffered == 9 and appender.pending_batches == 0
    info = appender.close()
    calls = faults.call_counts()
    assert calls["SharedResources.newTable"] - before.get("SharedResources.newTable", 0) == 1
    # The table was made without waiting for rows; its first batch took all nine.
    assert calls["Table.addData"] - before.get("Table.addData", 0) == 1
    assert info.rows == 9
    assert table_rows(blitz, info.file_id) == expected(3)


def test_tables_made_in_one_session_ask_for_its_shared_resources_once(
        small_batches: SessionManager, seeded: dict[str, Any], emulator: Emulator) -> None:
    target = TableTarget("Dataset", seeded["dataset"])
    made = []
    for name in ("first.h5", "second.h5"):
        before = emulator.call_counts()
        writer = TableWriter(small_batches, target, TableSchema(name, SCHEMA.columns))
        run(lambda writer=writer: writer.append(image_set(1)))
        made.append(run(writer.close).file_id)
        after = emulator.call_counts()
        asked = {op: after.get(op, 0) - before.get(op, 0) for op in (
            "ServiceFactory.sharedResources", "SharedResources.repositories",
            "SharedResources.newTable")}
        # The session's SharedResources and its repository are asked for with the
        # first table only; every table is made.
        first = name == "first.h5"
        assert asked == {"ServiceFactory.sharedResources": int(first),
                         "SharedResources.repositories": int(first),
                         "SharedResources.newTable": 1}
    assert len(set(made)) == 2
