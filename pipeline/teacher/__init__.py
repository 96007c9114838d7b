"""The teacher cache: the frozen CLIP (``clip``, ``encoder``, ``crops``, ``global_pass``),
what defines a teacher and how a run goes (``options``), and the run itself: the
coordinator (``run``), one shard (``shard``), its chunk writer (``writer``); ``rescore``
scores a finished cache with new prompts; ``resources`` holds what a process's shards share and
``cluster`` runs them on a dask.distributed cluster."""
