"""IQuery as a real OMERO.server answers it: ome.logic.QueryImpl's refusals and the HQL
Hibernate accepts from OME's own clients (BlitzGateway, OMERO.web), through plain omero-py."""

from __future__ import annotations

from typing import Any

import omero
import omero.sys
import pytest
from omero.rtypes import rint, rlong, unwrap

ALL = {"omero.group": "-1"}


def non_unique_message(query_name: str) -> str:
    """The message of ome.logic.QueryImpl.throwNonUnique, as the client receives it."""
    return (f"Query named:\n\n\t{query_name}\n\nhas returned more than one Object\n"
            "findBy methods must return a single value.\n"
            "Please try findAllBy methods for queries which return Lists.")


def ids(**values: Any) -> omero.sys.ParametersI:
    p = omero.sys.ParametersI()
    for key, value in values.items():
        p.add(key, rint(value) if key == "wsidx" else rlong(value))
    return p


@pytest.fixture
def query(blitz: Any) -> Any:
    return blitz().getQueryService()


# -- findBy methods find one object or none -------------------------------------------------

def test_find_by_query_refuses_several_rows_with_query_impls_message(query: Any) -> None:
    hql = "select i from Image i"
    with pytest.raises(omero.ApiUsageException) as info:
        query.findByQuery(hql, None, ALL)
    assert info.value.message == non_unique_message(hql)


def test_find_by_query_takes_one_object_repeated_by_a_join_but_not_several(
        query: Any, seeded: dict[str, Any]) -> None:
    hql = "select l.child from ScreenPlateLink l join l.child p join p.wells w " \
          "where p.id = :id and w.row = 0"
    # Three wells in row 0: three rows holding the same plate are still one object …
    plate = query.findByQuery(hql, ids(id=seeded["plate"]), ALL)
    assert unwrap(plate.getId()) == seeded["plate"]
    # … but three different wells are three objects.
    hql = "select w from Well w where w.plate.id = :id and w.row = 0"
    with pytest.raises(omero.ApiUsageException) as info:
        query.findByQuery(hql, ids(id=seeded["plate"]), ALL)
    assert info.value.message == non_unique_message(hql)


def test_find_by_query_pages_before_it_checks(query: Any) -> None:
    p = omero.sys.ParametersI()
    p.page(0, 1)
    image = query.findByQuery("select i from Image i order by i.id", p, ALL)
    assert isinstance(image, omero.model.ImageI)


def test_find_by_string_refuses_several_objects(query: Any) -> None:
    with pytest.raises(omero.ApiUsageException) as info:
        query.findByString("Dataset", "description", "")
    assert info.value.message == non_unique_message("findByString")


# -- HQL that Hibernate accepts ----------------------------------------------------------------

def test_properties_without_an_alias_as_blitzgateway_get_grid_size_sends(
        query: Any, seeded: dict[str, Any]) -> None:
    rows = query.projection("select max(row), max(column) from Well where plate.id = :id",
                            ids(id=seeded["plate"]), ALL)
    assert unwrap(rows) == [[1, 2]]


def test_string_concatenation_with_double_bar(query: Any) -> None:
    rows = query.projection(
        "select e.firstName || ' ' || e.lastName from Experimenter e where e.omeName = 'demo'",
        None, ALL)
    assert unwrap(rows) == [["Demo User"]]


def test_index_of_a_well_sample_is_its_place_in_the_wells_list(
        query: Any, seeded: dict[str, Any]) -> None:
    # OMERO.web's plate grid (webgateway/plategrid.py) picks one field per well this way.
    rows = query.projection(
        "select well.row, well.column, img.name, author.firstName||' '||author.lastName "
        "from Well well join well.wellSamples ws join ws.image img "
        "join img.details.owner author where well.plate.id = :id and index(ws) = :wsidx "
        "order by well.row, well.column", ids(id=seeded["plate"], wsidx=1), ALL)
    assert unwrap(rows) == [[r, c, f"{chr(65 + r)}{c + 1:02d}_f1", "Demo User"]
                            for r in range(2) for c in range(3)]


def test_index_arithmetic_against_a_correlated_scalar_subquery(
        query: Any, seeded: dict[str, Any]) -> None:
    # The plate-acquisition form of OMERO.web's grid: a field offset within each well.
    rows = query.projection(
        "select img.name from Well well join well.wellSamples ws join ws.image img "
        "where well.plate.id = :id and index(ws) - (select min(index(ws_inner)) "
        "from Well well_inner join well_inner.wellSamples ws_inner "
        "where well_inner.id = well.id) = :wsidx order by img.name",
        ids(id=seeded["plate"], wsidx=0), ALL)
    assert [r[0] for r in unwrap(rows)] == [f"{chr(65 + r)}{c + 1:02d}_f0"
                                           for r in range(2) for c in range(3)]


def test_min_and_max_index_as_blitzgateway_counts_fields(query: Any,
                                                         seeded: dict[str, Any]) -> None:
    rows = query.projection("select minIndex(ws), maxIndex(ws) from Well w "
                            "join w.wellSamples ws where w.plate.id=:oid",
                            ids(oid=seeded["plate"]), ALL)
    assert unwrap(rows) == [[0, 1]]


def test_group_by_gives_a_row_per_group(query: Any, seeded: dict[str, Any]) -> None:
    # OMERO.web's webclient counts fields per well this way.
    rows = query.projection("select w.row, count(ws), max(index(ws)) - min(index(ws)) "
                            "from Well w join w.wellSamples ws where w.plate.id = :id "
                            "group by w.row order by w.row", ids(id=seeded["plate"]), ALL)
    assert unwrap(rows) == [[0, 6, 1], [1, 6, 1]]


def test_a_join_gives_a_row_per_element_unless_distinct(query: Any,
                                                        seeded: dict[str, Any]) -> None:
    hql = "select {}p from Plate p join p.wells w where p.id = :id"
    rows = query.findAllByQuery(hql.format(""), ids(id=seeded["plate"]), ALL)
    assert len(rows) == 6 and {unwrap(p.getId()) for p in rows} == {seeded["plate"]}
    assert len(query.findAllByQuery(hql.format("distinct "), ids(id=seeded["plate"]),
                                    ALL)) == 1


def test_paging_a_collection_fetch_counts_distinct_roots(query: Any,
                                                         seeded: dict[str, Any]) -> None:
    p = ids(id=seeded["plate"])
    p.page(0, 5)
    plates = query.findAllByQuery("select p from Plate p left outer join fetch p.wells "
                                  "where p.id = :id", p, ALL)
    assert len(plates) == 1 and plates[0].sizeOfWells() == 6


# -- join fetch loads collections; the rest stay unloaded ----------------------------------------

def test_join_fetch_loads_plate_wells_samples_and_images(query: Any,
                                                         seeded: dict[str, Any]) -> None:
    plate = query.findByQuery(
        "select p from Plate p left outer join fetch p.wells w "
        "left outer join fetch w.wellSamples ws left outer join fetch ws.image "
        "where p.id = :id", ids(id=seeded["plate"]), ALL)
    assert plate.isWellsLoaded() and plate.sizeOfWells() == 6
    for well in plate.copyWells():
        label = f"{chr(65 + unwrap(well.getRow()))}{unwrap(well.getColumn()) + 1:02d}"
        names = [unwrap(ws.getImage().getName()) for ws in well.copyWellSamples()]
        assert names == [f"{label}_f0", f"{label}_f1"]


def test_collections_not_fetched_come_unloaded(query: Any, seeded: dict[str, Any]) -> None:
    wells = query.findAllByQuery("select w from Well w where w.plate.id = :id",
                                 ids(id=seeded["plate"]), ALL)
    assert len(wells) == 6 and not any(w.isWellSamplesLoaded() for w in wells)
    plate = query.findByQuery("select p from Plate p where p.id = :id",
                              ids(id=seeded["plate"]), ALL)
    assert not plate.isWellsLoaded()


def test_fetched_collection_holds_only_the_matching_elements(query: Any,
                                                             seeded: dict[str, Any]) -> None:
    well = query.findByQuery("select w from Well w join fetch w.wellSamples ws "
                             "join fetch ws.image i where w.id = :id and i.name like '%_f1'",
                             ids(id=seeded["wells"]["A02"]), ALL)
    assert [unwrap(ws.getImage().getName()) for ws in well.copyWellSamples()] == ["A02_f1"]


def test_join_fetch_of_group_memberships_lists_the_members(query: Any) -> None:
    group = query.findByQuery(
        "select g from ExperimenterGroup g left outer join fetch g.groupExperimenterMap m "
        "left outer join fetch m.child e where g.name = 'shared'", None, ALL)
    members = {unwrap(m.getChild().getOmeName()): unwrap(m.getOwner())
               for m in group.copyGroupExperimenterMap()}
    assert members == {"demo": False, "other": False}


def test_blitzgateway_lists_the_members_of_a_users_own_group(blitz: Any) -> None:
    conn = blitz()
    group = conn.getObject("ExperimenterGroup", conn.getEventContext().groupId)
    assert [unwrap(m.getChild().getOmeName()) for m in group.copyGroupExperimenterMap()] == [
        "demo"]
    leaders, members = group.groupSummary()
    assert [e.getOmeName() for e in leaders] == ["demo"] and members == []


# -- like is case-sensitive, ilike is not ------------------------------------------------------

def test_like_is_case_sensitive_and_ilike_is_not(query: Any) -> None:
    hql = "select s.name from Screen s where s.name {} 'demo%'"
    assert query.projection(hql.format("like"), None, ALL) == []
    assert unwrap(query.projection(hql.format("ilike"), None, ALL)) == [["Demo screen"]]


# -- what the emulator does not understand answers at once, naming it ----------------------

@pytest.mark.parametrize("hql,named", [
    ("select elements(p.wells) from Plate p", "elements()"),
    ("select index(l) from Plate p join p.screenLinks l", "index()"),
    ("select w.row, count(w) from Well w", "group by"),
    ("select w from Well w where w.nonsense = 1", "nonsense"),
])
def test_unsupported_hql_answers_at_once_naming_the_construct(query: Any, hql: str,
                                                              named: str) -> None:
    with pytest.raises(omero.ApiUsageException) as info:
        query.findAllByQuery(hql, None, ALL)
    assert named in info.value.message
