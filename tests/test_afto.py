"""af-to (NAT64) states read as pfctl prints them, in the views, the report,
the rollups and `show --local/--remote`.

PF builds an af-to state's stack key in the other family with its sides
swapped: [1] is the initiator's new source, [0] the responder. Checked here
against the simulator's truth on a recorded history of the small series.
"""

import csv
import io
import json
import sqlite3

import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def afto(small_series, small_history):
    """(history path, the truth rows of its af-to states)."""
    db = small_history
    with open(small_series.truth_path) as f:
        rows = [json.loads(line) for line in f]
    states = [r for r in rows if "id" in r and r["snapshots"] and r["af"] != r["stack_af"]]
    assert len(states) >= 5, "the series should hold some af-to states"
    return db, states


def _port(row, key, i):
    return row[key]["port"][i]


def test_the_views_name_the_initiator_its_nat_address_and_the_responder(afto):
    db, states = afto
    con = sqlite3.connect(db)
    for t in states:
        sid = f"{t['id']:016x}"
        row = con.execute("SELECT local_addr, local_port, nat_addr, nat_port, remote_addr, "
                          "remote_port, translated, bytes_out, bytes_in FROM connections "
                          "WHERE id = ?", (sid,)).fetchone()
        wire, stack = t["wire"], t["stack"]
        assert row[0] == wire["addr"][0] == t["local_host"], sid
        assert row[2] == stack["addr"][1] and row[4] == stack["addr"][0], sid
        if t["proto"] in (6, 17):
            assert (row[1], row[3], row[5]) == (_port(t, "wire", 0), _port(t, "stack", 1),
                                                _port(t, "stack", 0)), sid
        assert row[6] == 1
        if t["final"] is not None:
            # The initiator sent bytes[0].
            assert (row[7], row[8]) == tuple(t["final"]["bytes"]), sid
        nat = con.execute("SELECT internal_addr, external_addr, remote_addr FROM nat "
                          "WHERE id = ?", (sid,)).fetchone()
        assert nat == (wire["addr"][0], stack["addr"][1], stack["addr"][0])


def test_show_finds_them_by_their_local_and_remote_ends(afto):
    db, states = afto
    t = states[0]
    sid = f"{t['id']:016x}"
    wire, stack = t["wire"], t["stack"]
    for option, address, found in (("--local", wire["addr"][0], True),
                                   ("--local", stack["addr"][1], True),
                                   ("--remote", stack["addr"][0], True),
                                   ("--remote", wire["addr"][1], True),
                                   ("--remote", wire["addr"][0], False),
                                   ("--local", stack["addr"][0], False)):
        result = run_cli("show", "--db", db, "--id", sid, option, address, "-vv")
        assert result.returncode == 0, result.stderr
        assert (f"id: {sid}" in result.stdout) is found, (option, address)


def test_the_report_and_rollups_count_the_initiator_and_its_nat_address(afto):
    """The responder's IPv6 form (the NAT64 prefix the initiator addressed) is
    no translated address, no remote host and no connection's end: the
    responder is its IPv4 address, and the initiator's new source the NAT."""
    db, states = afto
    result = run_cli("report", "--db", db, "--since", "2026-11-24T21:00Z",
                     "--until", "2026-11-24T23:00Z", "--top", "100000", "--format", "json")
    assert result.returncode == 0, result.stderr
    tables = {t["key"]: t for s in json.loads(result.stdout)["sections"] for t in s["tables"]}
    addressed = {t["wire"]["addr"][1] for t in states}
    nat = {r[0] for r in tables["nat_addresses"]["rows"]}
    assert not addressed & nat
    assert {t["stack"]["addr"][1] for t in states} <= nat
    remote = {r[0] for k in ("remote_bytes_out", "remote_bytes_in", "remote_connections")
              for r in tables[k]["rows"]}
    assert not addressed & remote
    local = {r[0] for r in tables["local_connections"]["rows"]}
    assert {t["local_host"] for t in states} <= local
    for key in ("longest", "largest", "open_for_days"):
        for row in tables[key]["rows"] or []:
            assert not any(a in cell for a in addressed for cell in row[1:4]), (key, row)
    # Among the longest-lived, the af-to ones read initiator -> responder via NAT.
    ends = {(t["wire"]["addr"][0], t["stack"]["addr"][0], t["stack"]["addr"][1])
            for t in states}
    shown = {(row[1].rsplit("[", 1)[0].rsplit(":", 1)[0] if "[" not in row[1]
              else row[1].split("[")[0],
              row[2].split(":")[0] if "[" not in row[2] else row[2].split("[")[0],
              row[3].split(":")[0] if "[" not in row[3] else row[3].split("[")[0])
             for row in tables["longest"]["rows"]}
    assert ends & shown


def test_show_exports_carry_the_views_ends_for_every_state(afto):
    """show's JSON and CSV name each state's ends as the connections view does,
    af-to or not, translated or not, in or out."""
    db, states = afto
    names = ("local_addr", "local_port", "nat_addr", "nat_port", "remote_addr",
             "remote_port", "translated", "bytes_out", "bytes_in")
    con = sqlite3.connect(db)
    view = {(r[0], r[1]): r[2:] for r in con.execute(
        f"SELECT creatorid, id, {', '.join(names)} FROM connections")}
    con.close()
    got = run_cli("show", "--db", db, "--format", "json")
    assert got.returncode == 0, got.stderr
    rows = [json.loads(line) for line in got.stdout.splitlines()]
    assert len(rows) == len(view)
    for r in rows:
        want = view[(r["creatorid"], r["id"])]
        assert tuple(r[n] for n in names[:6]) == want[:6], r["id"]
        assert (int(r["translated"]), r["bytes_out"], r["bytes_in"]) == want[6:], r["id"]
    kinds = {(r["direction"], r["nk"]["af"] != r["sk"]["af"], r["translated"]) for r in rows}
    assert {(1, True, True), (1, False, False), (2, False, True), (2, False, False)} <= kinds
    afto_ids = {f"{t['id']:016x}" for t in states}
    assert afto_ids <= {r["id"] for r in rows if r["nk"]["af"] != r["sk"]["af"]}
    table = list(csv.DictReader(io.StringIO(
        run_cli("show", "--db", db, "--format", "csv").stdout)))
    assert [(t["local_addr"], t["nat_addr"], t["remote_addr"], t["bytes_out"]) for t in table] \
        == [(r["local_addr"], r["nat_addr"], r["remote_addr"], str(r["bytes_out"]))
            for r in rows]
