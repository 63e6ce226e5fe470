"""The emulator's refusals name the Java class a real server threw, as omero-blitz sends it.

omero-blitz's ``IceMapper.handleException`` turns the services' ``ome.conditions.*`` into
the ``omero.*`` exception of the same name and fills ``serverExceptionClass`` with the
thrown class's name (``fillServerError``): ``ome.conditions.ApiUsageException``, never the
bare ``ApiUsageException``.
"""

from __future__ import annotations

from typing import Any

import pytest


def test_refusals_carry_the_java_class_name_the_real_server_sends(blitz: Any) -> None:
    import omero
    from omero.rtypes import rstring

    conn = blitz("demo")
    query = conn.getQueryService()
    # IQuery.get of a missing row: Hibernate's refusal, mapped as ValidationException.
    with pytest.raises(omero.ValidationException) as missing:
        query.get("Image", 987654321)
    assert missing.value.serverExceptionClass == "ome.conditions.ValidationException"
    # A null query parameter: ApiUsageException.
    params = omero.sys.ParametersI()
    params.map = {"id": None}
    with pytest.raises(omero.ApiUsageException) as null:
        query.projection("select i.id from Image i where i.id = :id", params)
    assert null.value.serverExceptionClass == "ome.conditions.ApiUsageException"
    # HQL Hibernate cannot parse: ome.services.query.QueryException.
    with pytest.raises(omero.QueryException) as illegal:
        query.projection("select from where", None)
    assert illegal.value.serverExceptionClass == "ome.services.query.QueryException"
    # A session that does not exist: ome.conditions.RemovedSessionException.
    with pytest.raises(omero.RemovedSessionException) as removed:
        conn.getSessionService().getSession("0" * 36)
    assert removed.value.serverExceptionClass == "ome.conditions.RemovedSessionException"

    # A Java exception outside ome.conditions (IRenderingSettings' container check throws
    # IllegalArgumentException): IceMapper's catch-all, InternalException naming it.
    with pytest.raises(omero.InternalException) as java:
        conn.getRenderingSettingsService().resetDefaultsInSet("Experimenter", [1])
    assert java.value.serverExceptionClass == "java.lang.IllegalArgumentException"

    guest = blitz("guest", "guest")
    dataset = omero.model.DatasetI()
    dataset.setName(rstring("guest's"))
    with pytest.raises(omero.SecurityViolation) as refused:
        guest.getUpdateService().saveAndReturnObject(dataset)
    assert refused.value.serverExceptionClass == "ome.conditions.SecurityViolation"


def test_every_helper_names_an_ome_conditions_class_unless_told_otherwise() -> None:
    import omero

    from cellprofiler_omero.emulator import icebase

    made = [icebase.api_usage("a"), icebase.security_violation("b"), icebase.validation("c"),
            icebase.resource_error("d"), icebase.internal("e")]
    assert [type(e) for e in made] == [omero.ApiUsageException, omero.SecurityViolation,
                                       omero.ValidationException, omero.ResourceError,
                                       omero.InternalException]
    assert [e.serverExceptionClass for e in made] == [
        f"ome.conditions.{type(e).__name__}" for e in made]
    # A Java runtime exception the server does not map keeps its own class name.
    odd = icebase.internal("Index 3 out of bounds", "java.lang.ArrayIndexOutOfBoundsException")
    assert odd.serverExceptionClass == "java.lang.ArrayIndexOutOfBoundsException"
