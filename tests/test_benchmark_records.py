"""benchmarks/RESULTS.md is rendered from the JSON records in benchmarks/results/, and the records say how they were
measured. Everything here reads committed files or writes under tmp_path; nothing is timed."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
RENDER = BENCH / "render_results.py"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    sys.path.insert(0, str(BENCH))  # the scripts import `record` as their sibling
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


record = _module("record")
render_results = _module("render_results")


def check(results_dir: Path = BENCH / "results", out: Path = BENCH / "RESULTS.md") -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(RENDER), "--check", "--results-dir", str(results_dir), "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def copy(tmp_path):
    """The committed records and RESULTS.md, copied: the tamper tests must not touch the repository's files."""
    shutil.copytree(BENCH / "results", tmp_path / "results")
    shutil.copy(BENCH / "RESULTS.md", tmp_path / "RESULTS.md")
    return tmp_path


def test_committed_results_md_is_what_the_records_render():
    proc = check()
    assert proc.returncode == 0, f"RESULTS.md is stale; run python benchmarks/render_results.py\n{proc.stdout}"


def test_a_tampered_figure_in_results_md_fails_the_check(copy):
    assert check(copy / "results", copy / "RESULTS.md").returncode == 0  # the copy itself is in step
    text = (copy / "RESULTS.md").read_text()
    # the first table row with a decimal figure: change its first digit after the point
    row = next(line for line in text.splitlines() if line.startswith("| ") and re.search(r"\d\.\d", line))
    m = re.search(r"\d\.(\d)", row)
    tampered = row[:m.start(1)] + str((int(m.group(1)) + 1) % 10) + row[m.end(1):]
    (copy / "RESULTS.md").write_text(text.replace(row, tampered, 1))
    proc = check(copy / "results", copy / "RESULTS.md")
    assert proc.returncode == 1
    # the diff names both lines: what is on disk, and what the records render
    assert f"-{tampered}" in proc.stdout.splitlines() and f"+{row}" in proc.stdout.splitlines()


def test_a_changed_record_fails_the_check(copy):
    path = next(p for p in sorted((copy / "results").glob("*.json")) if json.loads(p.read_text()).get("tables"))
    rec = json.loads(path.read_text())
    table = rec["tables"][0]
    i = next(i for i, v in enumerate(table["rows"][0]) if isinstance(v, (int, float)) and not isinstance(v, bool))
    table["rows"][0][i] = table["rows"][0][i] + 1  # +1 changes any rendered number, whatever its format
    path.write_text(json.dumps(rec))
    assert check(copy / "results", copy / "RESULTS.md").returncode == 1


def test_a_new_record_without_a_section_fails_the_check(copy):
    rec = json.loads(next((copy / "results").glob("*.json")).read_text())
    rec["name"] = "zz_new"
    (copy / "results" / "zz_new.json").write_text(json.dumps(rec))
    assert check(copy / "results", copy / "RESULTS.md").returncode == 1


@pytest.mark.parametrize("path", sorted((BENCH / "results").glob("*.json")), ids=lambda p: p.stem)
def test_every_committed_record_states_how_it_was_measured(path):
    rec = json.loads(path.read_text())
    assert rec["name"] == path.stem
    assert re.match(r"python (benchmarks|scripts)/", rec["command"]), rec["command"]  # the script that measured it
    assert re.fullmatch(r"[0-9a-f]{40}", rec["git"]["commit"]) and isinstance(rec["git"]["dirty"], bool)
    m = rec["machine"]
    assert m["cpu_model"] and m["cpu_count"] >= 1 and m["ram_gib"] > 0 and m["platform"]
    assert "torch" in m["packages"]
    for when in ("start", "end"):
        assert len(rec["load_average"][when]) == 3 and all(x >= 0 for x in rec["load_average"][when])
    start, end = (datetime.fromisoformat(rec[k]) for k in ("started", "finished"))
    assert start.utcoffset().total_seconds() == 0 and start <= end
    # and its section is in RESULTS.md, under its own title and naming its record
    text = (BENCH / "RESULTS.md").read_text()
    assert f"## {rec['title']}\n" in text and f"`benchmarks/results/{path.stem}.json`" in text


def _record(load_start: float, load_end: float, cores: int = 2) -> dict:
    return {"name": "x", "title": "X", "command": "python benchmarks/x.py", "started": "2026-01-01T00:00:00+00:00",
            "finished": "2026-01-01T00:01:00+00:00", "git": {"commit": "a" * 40, "dirty": False},
            "machine": {"cpu_model": "CPU", "cpu_count": cores, "ram_gib": 1.0, "gpus": [], "platform": "p",
                        "python": "3", "packages": {"torch": "2"}},
            "load_average": {"start": [load_start, 0.0, 0.0], "end": [load_end, 0.0, 0.0]},
            "tables": [{"title": "T", "columns": ["a", "b", "c", "d"], "rows": [["x", 0.12345, 7, None]],
                        "formats": ["", ".3f", "d", ""]}],
            "notes": ["n1"]}


@pytest.mark.parametrize("start,end,loaded", [(2.5, 0.1, True), (0.1, 2.01, True), (2.0, 2.0, False),
                                              (0.3, 1.9, False)])
def test_loaded_means_1min_load_above_the_core_count_at_start_or_end(start, end, loaded):
    text = render_results.render_record(_record(start, end, cores=2))
    assert ("**loaded**" in text) is loaded and ("not loaded" in text) is (not loaded)


def test_a_table_renders_with_its_formats():
    text = render_results.render_record(_record(0.0, 0.0))
    # by hand: 0.12345 at .3f is 0.123, 7 at d is 7, None is "-"
    assert "| a | b | c | d |\n|---|---|---|---|\n| x | 0.123 | 7 | - |\n" in text
    assert text.rstrip().endswith("- n1")


def test_a_row_with_the_wrong_number_of_cells_is_refused():
    rec = _record(0.0, 0.0)
    rec["tables"][0]["rows"].append([1, 2])
    with pytest.raises(ValueError, match="2 cells for 4 columns"):
        render_results.render_record(rec)


def test_write_record_carries_the_provenance(tmp_path):
    started = record.begin([str(BENCH / "x.py"), "--flag", "a b"])
    path = record.write_record("x", {"title": "X", "value": float("nan"), "results": {"k": 1}}, started, tmp_path)
    rec = json.loads(path.read_text())
    assert path == tmp_path / "x.json" and rec["name"] == "x"
    assert rec["command"] == "python benchmarks/x.py --flag 'a b'"  # repo-relative, shell-quoted
    assert rec["value"] == "NaN"  # JSON has no NaN: kept as a string, not dropped
    assert rec["results"] == {"k": 1}
    assert len(rec["load_average"]["start"]) == 3 and len(rec["load_average"]["end"]) == 3
    assert rec["machine"]["cpu_count"] >= 1 and rec["git"]["commit"]


def test_write_record_refuses_a_payload_that_would_overwrite_provenance(tmp_path):
    with pytest.raises(ValueError, match="command"):
        record.write_record("x", {"command": "fake"}, record.begin(["x.py"]), tmp_path)


def test_run_child_reports_each_childs_own_peak_rss():
    # 200 MiB written byte by byte (so the pages are resident), then a child that allocates almost nothing: with
    # RUSAGE_CHILDREN (the largest child so far) the second would also report >= 200 MiB.
    # This process first grows by 300 MiB: a child forked straight from it inherits that as its ru_maxrss floor
    # (how the suite failed inside a 500 MiB pytest), so the small child must still report far less than 300 MiB.
    ballast = bytearray(300 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    big = record.run_child([sys.executable, "-c", "x = b'a' * (200 * 2**20); print(len(x))"])
    small = record.run_child([sys.executable, "-c", "print(1)"])
    assert big.returncode == 0 and big.stdout.strip() == str(200 * 2**20)
    assert big.max_rss_kib >= 200 * 1024
    assert small.max_rss_kib < big.max_rss_kib - 150 * 1024  # an interpreter is ~10-40 MiB, far below 200 MiB
    assert small.max_rss_kib < 150 * 1024, "the child inherited this process's RSS high-water mark"
    del ballast


def test_gnu_time_output_is_parsed():
    quickstart = _module("quickstart")
    text = ("\tElapsed (wall clock) time (h:mm:ss or m:ss): 8:34.12\n"
            "\tMaximum resident set size (kbytes): 5637636\n")
    assert quickstart.parse_gnu_time(text) == {"wall_s": pytest.approx(8 * 60 + 34.12), "max_rss_kib": 5637636}
    hours = text.replace("8:34.12", "1:02:03")
    assert quickstart.parse_gnu_time(hours)["wall_s"] == pytest.approx(3723.0)


def test_a_run_during_which_the_code_changed_says_so(tmp_path):
    started = record.begin(["x.py"])
    started["git_start"] = {**started["git_start"], "code_sha256": "0" * 64}  # as if the code differed at the start
    rec = json.loads(record.write_record("x", {"title": "X"}, started, tmp_path).read_text())
    assert rec["git"]["changed_during_run"] is True
    rec.update(_record(0.0, 0.0), git=rec["git"])
    assert "the code changed while it ran" in render_results.render_record(rec)
