"""Build the package data of HICO-DET from the fact files of a `shared/hico` folder.

    python scripts/import_hico_tables.py ../shared/hico

Writes hoidata/data/hico_det/labelspace.json and instances_test2015.json.gz, checking
every fact against the others on the way. Only a maintainer runs this; the package
never reads the source folder at run time.
"""

import gzip
import json
import sys
from pathlib import Path

from hoidata.labelspace import SCHEMA, LabelSpace

OUT = Path(__file__).resolve().parent.parent / "hoidata" / "data" / "hico_det"


def main(src: str) -> None:
    src = Path(src)
    load = lambda name: json.loads((src / name).read_text())  # noqa: E731
    objects, verbs = load("objects.json"), load("verbs.json")
    classes, counts = load("hoi_classes.json"), load("hoi_train_counts.json")
    test = load("instances_test2015.json")
    rare = load("rare_nonrare.json")
    c91 = {int(k): v for k, v in load("coco91tohico80.json").items()}
    c80 = {int(k): v for k, v in load("coco80tohico80.json").items()}

    assert [c["hoi"] for c in classes] == list(range(600))
    assert [[c["hoi"], c["object"], c["verb"]] for c in classes] == test["correspondence"]
    assert objects["hico"] == test["objects"] and verbs == test["verbs"]
    d = {
        "schema": SCHEMA,
        "name": "hico_det",
        "objects": objects["hico"],
        "verbs": verbs,
        "hoi": [[c["verb"], c["object"]] for c in classes],
        "human": objects["hico"].index("person"),
        "train_counts": counts,
        "rare_threshold": 10,
        "prompts": load("prompts.json"),
        "zero_shot_splits": {k: {"setting": v["setting"], "unseen": v["unseen"]}
                             for k, v in load("zero_shot_splits.json").items()},
        "coco80_to_object": [c80[k + 1] for k in range(80)],
        "coco91_to_object": {str(k): v for k, v in sorted(c91.items())},
    }
    ls = LabelSpace.from_dict(d, "shared/hico")
    assert sorted(map(int, ls.rare.nonzero()[0])) == sorted(rare["rare"]) == sorted(test["rare"])
    assert objects["hico_to_coco91_category_id"] == [
        next(k for k, v in c91.items() if v == o) for o in range(80)]
    OUT.mkdir(parents=True, exist_ok=True)
    ls.save(OUT / "labelspace.json")
    # mtime=0 keeps the archive byte-identical across rebuilds
    with open(OUT / "instances_test2015.json.gz", "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as f:
        f.write((src / "instances_test2015.json").read_bytes())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/hico")
