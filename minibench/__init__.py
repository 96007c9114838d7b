"""minibench: the bundled benchmark, a small procedural HOI world (see minibench/README.md).

- :mod:`minibench.labels`: its label space (13 objects, 9 verbs, 38 HOI classes);
- :mod:`minibench.world`: seeded scenes rendered with PIL, ground-truth pairs, union crops;
- :mod:`minibench.build`: ``python -m minibench.build --out DIR`` writes train / test
  splits, annotations, simulated detections (:mod:`minibench.detector`) and the web
  corpus (:mod:`minibench.corpus`);
- :mod:`minibench.clip` / :mod:`minibench.clip_train`: the small open_clip teacher that
  ships in ``minibench/model/`` and the script that trains it.
"""
