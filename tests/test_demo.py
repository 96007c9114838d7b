"""The demo end to end at a tiny size: world, teacher cache, students, results.json, pictures."""

import json

from hoi.demo import run_demo

ROWS = ["chance", "teacher", "global-level", "union-level", "all-late", "all-early"]


def test_demo_writes_the_results_table(tmp_path):
    lines = []
    results = run_demo(tmp_path / "demo", epochs=1, train_images=40, test_images=40, figures=2, echo=lines.append)
    written = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert [r["name"] for r in written["rows"]] == ROWS
    for row in written["rows"]:
        for setting in ("default", "known_object"):
            assert set(row[setting]) == {"full", "rare", "non_rare"}
            assert 0.0 <= row[setting]["full"] <= 1.0
    assert len(list((tmp_path / "demo" / "figures").glob("*.png"))) == 2
    assert any("all-late" in line or "late fusion" in line for line in lines)
