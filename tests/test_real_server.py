"""Tests that run against any OMERO server: the shared emulator, or yours (``make test-real``).

The ``real_server`` tests here (and those marked in test_ice_transport, test_cp_reader
and test_cp_headless) use only the ``target`` fixture: they upload what they need into
the target's writable dataset and read it back through the product. The unmarked tests
pin down how the target is taken from the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.core.uploading import upload
from tests.conftest import (
    TARGET_ENV,
    TARGET_SETTINGS_ENV,
    Leftovers,
    Target,
    run,
    target_from_environment,
)
from tests.test_cli import run_cli

FULL_ENV = {TARGET_ENV["server"]: "omero.example.org:4064", TARGET_ENV["user"]: "alice",
            TARGET_ENV["password"]: "s3cret-Pw", TARGET_ENV["dataset"]: "51"}


# -- the target from the environment (no server needed) ------------------------------------


def test_no_variables_means_the_emulator() -> None:
    assert target_from_environment({}) is None


def test_the_four_variables_name_the_server_account_and_dataset() -> None:
    extra = "server.secure=true  transports.read=pixelbuffer,ice"
    target = target_from_environment(dict(FULL_ENV, **{TARGET_SETTINGS_ENV: extra}))
    assert target is not None
    assert (target.host, target.port, target.user, target.dataset_id, target.is_emulator) == \
        ("omero.example.org", 4064, "alice", 51, False)
    settings = target.settings(Path("/tmp/tokens"))
    assert settings.server.host == "omero.example.org" and settings.server.secure is True
    assert settings.transports.read == ("pixelbuffer", "ice")
    env = target.child_environment()
    assert env["CELLPROFILER_OMERO_SERVER_HOST"] == "omero.example.org"
    assert env["CELLPROFILER_OMERO_SERVER_SECURE"] == "true"


def test_the_port_defaults_to_omeros() -> None:
    target = target_from_environment(dict(FULL_ENV, **{TARGET_ENV["server"]: "omero.local"}))
    assert target is not None and (target.host, target.port) == ("omero.local", 4064)


def test_the_password_is_never_shown() -> None:
    target = target_from_environment(FULL_ENV)
    assert target is not None
    shown = repr(target) + str(target)
    assert "s3cret-Pw" not in shown and "password" not in shown
    # Children get the server from the product's own variables, never the test credentials.
    child = target.child_environment()
    assert not any(value == "s3cret-Pw" for value in child.values())


@pytest.mark.parametrize("missing", ["user", "password", "dataset"])
def test_a_partial_set_names_what_is_missing(missing: str) -> None:
    environ = {k: v for k, v in FULL_ENV.items() if k != TARGET_ENV[missing]}
    with pytest.raises(pytest.UsageError) as caught:
        target_from_environment(environ)
    message = str(caught.value)
    assert message.startswith(f"{TARGET_ENV[missing]} not set") and "README.md" in message
    assert "s3cret-Pw" not in message


@pytest.mark.parametrize("name,value,needle", [
    ("server", "omero.example.org:port", "host:port"),
    ("dataset", "Dataset:51", "a Dataset id"),
])
def test_malformed_values_are_refused(name: str, value: str, needle: str) -> None:
    with pytest.raises(pytest.UsageError, match=needle):
        target_from_environment(dict(FULL_ENV, **{TARGET_ENV[name]: value}))


def test_unknown_product_settings_are_refused() -> None:
    with pytest.raises(pytest.UsageError, match=r"_TEST_SETTINGS.*'server.colour'"):
        target_from_environment(dict(FULL_ENV, **{TARGET_SETTINGS_ENV: "server.colour=red"}))


# -- what the tests make is recorded and deleted --------------------------------------------


@pytest.mark.real_server
def test_uploads_and_tables_of_a_test_are_recorded_and_deleted(target: Target,
                                                                tmp_path: Path) -> None:
    from cellprofiler_omero.core.model import ColumnKind, ColumnSpec, TableSchema, TableTarget
    from cellprofiler_omero.core.tables import TableWriter

    mgr = SessionManager(target.settings(tmp_path / "tokens"))
    leftovers = Leftovers()
    mgr.registry.register(leftovers, "test-leftovers")
    run(lambda: mgr.connect(user=target.user, password=target.password))
    try:
        image = run(lambda: upload(mgr, np.zeros((4, 4), np.uint8), name="recorded",
                                   dataset_id=target.dataset_id))
        writer = TableWriter(mgr, TableTarget("Dataset", target.dataset_id),
                             TableSchema("recorded.h5", (ColumnSpec("N", ColumnKind.LONG),)))
        run(lambda: writer.append({"N": [1, 2]}))
        table = run(writer.close)
        assert leftovers.objects == {"Image": {image.id}, "Annotation": {table.annotation_id}}
    finally:
        run(mgr.close)
        leftovers.delete(target)
    assert leftovers.objects == {}
    images, annotations = target.dataset_contents()
    assert image.id not in images and table.annotation_id not in annotations
    conn = target.blitz()
    try:
        assert conn.getObject("OriginalFile", table.file_id) is None  # the table's file too
    finally:
        conn.close()


def test_delete2_of_another_users_table_answers_a_graph_exception(
        manager: SessionManager, blitz: Any, seeded: dict[str, Any]) -> None:
    # The emulator deletes annotations and files by omero-blitz's delete rules; a user
    # may not delete another user's annotation (the cleanup above relies on the rest).
    import omero.cmd

    from cellprofiler_omero.core.model import ColumnKind, ColumnSpec, TableSchema, TableTarget
    from cellprofiler_omero.core.tables import TableWriter

    writer = TableWriter(manager, TableTarget("Dataset", seeded["dataset"]),
                         TableSchema("not yours.h5", (ColumnSpec("N", ColumnKind.LONG),)))
    run(lambda: writer.append({"N": [1]}))
    table = run(writer.close)
    with pytest.raises(omero.CmdError) as caught:
        blitz("other").deleteObjects("Annotation", [table.annotation_id], wait=True)
    assert isinstance(caught.value.err, omero.cmd.GraphException)
    assert f"FileAnnotation[{table.annotation_id}]" in caught.value.err.message
    assert blitz().getObject("OriginalFile", table.file_id) is not None


# -- the command line -----------------------------------------------------------------------


@pytest.mark.real_server
def test_cli_logs_in_then_lists_and_links_an_uploaded_image(target: Target,
                                                            target_manager: SessionManager,
                                                            tmp_path: Path) -> None:
    array = np.random.default_rng(12).integers(0, 4000, (2, 48, 40)).astype(np.uint16)
    image = run(lambda: upload(target_manager, array, name="cli listing", axes="CYX",
                               dataset_id=target.dataset_id, channel_names=["DNA", "Actin"]))
    token_file = tmp_path / "tokens" / "token"
    env = target.child_environment(OMERO_USER_TOKEN_DIR=str(token_file.parent))
    dataset = f"Dataset:{target.dataset_id}"

    code, _, err = run_cli(dict(env, OMERO_PASSWORD=target.password), "login", "--user",
                           target.user, "--save-token")
    assert code == 0, err
    assert token_file.exists()

    # Later processes use the saved token: no password anywhere.
    code, out, err = run_cli(env, "ls", dataset, "--json", "--all")
    assert code == 0, err
    items = {item["id"]: item for item in json.loads(out)["items"]}
    listed = items[image.id]
    assert (listed["ref"], listed["name"], listed["pixel_type"]) == \
        (f"Image:{image.id}", "cli listing", "uint16")
    assert listed["size"] == {"x": 40, "y": 48, "z": 1, "c": 2, "t": 1}

    code, out, err = run_cli(env, "urls", dataset, "--form", "legacy")
    assert code == 0, err
    assert f"omero:iid={image.id}" in out.splitlines()
    code, out, err = run_cli(env, "urls", dataset)
    assert code == 0, err
    assert any(line.endswith(f"/webclient/?show=image-{image.id}") for line in out.splitlines())

    code, _, err = run_cli(env, "logout")
    assert code == 0, err
    assert not token_file.exists()


# -- CellProfiler's reader ------------------------------------------------------------------


@pytest.mark.real_server
@pytest.mark.cellprofiler
def test_cellprofiler_reader_reads_an_uploaded_image(target: Target,
                                                     target_cp_manager: SessionManager
                                                     ) -> None:
    from cellprofiler_core.image.abstract_image.file import FileImage

    from tests.test_cp_reader import reader_for

    array = np.random.default_rng(7).integers(0, 65535, (2, 40, 56)).astype(np.uint16)
    image = run(lambda: upload(target_cp_manager, array, name="reader round trip",
                               axes="CYX", dataset_id=target.dataset_id,
                               channel_names=["DNA", "Actin"]))

    reader = reader_for(f"https://{target.host}/webclient/?show=image-{image.id}")
    names: list[str] = []
    every = reader.read(c=None, channel_names=names)
    assert every.shape == (40, 56, 2) and every.dtype == np.uint16
    np.testing.assert_array_equal(np.moveaxis(every, -1, 0), array)
    assert names == ["DNA", "Actin"]
    np.testing.assert_array_equal(reader.read(c=1, xywh=(3, 4, 10, 12)), array[1, 4:16, 3:13])
    reader.close()

    file_image = FileImage("DNA", "", f"omero:iid={image.id}", channel=0,
                           metadata_rescale=True)
    np.testing.assert_allclose(file_image.provide_image(None).pixel_data, array[0] / 65535.0,
                               rtol=1e-6)
    file_image.release_memory()


# -- make test-real ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _without_target(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TARGET_ENV.values()}
    env.update(extra)
    return env


def test_make_test_real_refuses_until_every_variable_is_set() -> None:
    env = _without_target(**{TARGET_ENV["server"]: "omero.example.org:4064",
                             TARGET_ENV["password"]: "s3cret-Pw"})
    done = subprocess.run(["make", "--no-print-directory", "test-real"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    first = done.stderr.strip().splitlines()[0]
    assert first.startswith(f"make test-real: set {TARGET_ENV['user']} {TARGET_ENV['dataset']}")
    assert "README.md" in first and done.stdout == ""
    leaked = "s3cret-Pw" in done.stdout + done.stderr
    assert not leaked, "the password was printed"


def test_the_real_server_run_selects_exactly_the_marked_tests() -> None:
    env = _without_target(**FULL_ENV)
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "real_server",
                           "--collect-only", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    selected = {line.split("[")[0] for line in done.stdout.splitlines() if "::" in line}
    assert {
        "tests/test_ice_transport.py::test_upload_shapes_round_trip",
        "tests/test_ice_transport.py::test_rows_read_back_with_omero2pandas_with_types",
        "tests/test_cp_reader.py::test_objects_image_reads_label_planes_as_integers",
        "tests/test_cp_headless.py::test_tables_match_cellprofilers_measurements",
        "tests/test_real_server.py::test_cli_logs_in_then_lists_and_links_an_uploaded_image",
    } <= selected
    assert "tests/test_ice_transport.py::test_every_pixel_type_reads_byte_identical" \
        not in selected
    assert not any("test_the_port_defaults" in name for name in selected)
