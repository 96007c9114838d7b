"""HOI classes asked for in words: ``"ride horse"``, a file of them, or another label space.

A trained student scores any class whose text embedding it is given, so a query is turned
into a :class:`~hoidata.labelspace.LabelSpace` of its own: the base label space's objects
(the ones its detector knows) and human, the base verbs plus any new ones, and one class
per query. A class the base label space has keeps its prompt; a new composition of a known
verb is written with that verb's phrase in the base prompts (``"a person riding a
bicycle"`` -> ``"a person riding a horse"``); a new verb takes its ``-ing`` form, or the
prompt given after ``=`` (``"feed horse = a photo of a person feeding a horse"``).

Predictions made with such a label space record its classes (:func:`class_record`), and
:func:`to_base_classes` maps them back to the classes of the label space they are
evaluated against by name, refusing a class that label space lacks.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from hoicore.errors import InputError

from .labelspace import SCHEMA, LabelSpace


class ClassQueryError(InputError):
    """A class asked for in words that cannot be scored; the message names it."""


def _key(words: str) -> str:
    return "_".join(words.strip().lower().replace("_", " ").split())


def _object_text(ls: LabelSpace, obj: int) -> str:
    """How the base prompts write object ``obj`` with its article ('a sports ball', 'an apple')."""
    name = ls.objects[obj].replace("_", " ")
    for (_, o), prompt in zip(ls.hoi, ls.prompts):
        m = re.search(rf"\b(an?) {re.escape(name)}$", prompt, flags=re.IGNORECASE) if o == obj else None
        if m:
            return f"{m.group(1).lower()} {name}"
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _verb_templates(ls: LabelSpace) -> dict[int, str]:
    """verb -> its prompt with the object's text replaced by ``{}``, from the base prompts."""
    texts = {o: _object_text(ls, o) for o in {o for _, o in ls.hoi}}  # once per object, not per class
    out = {}
    for (v, o), prompt in zip(ls.hoi, ls.prompts):
        text = texts[o]
        if v not in out and prompt.lower().endswith(text):
            out[v] = prompt[:len(prompt) - len(text)] + "{}"
    return out


def _prefix(ls: LabelSpace) -> str:
    """The words every base prompt starts with ('A photo of a person ')."""
    common = ls.prompts[0]
    for p in ls.prompts[1:]:
        while not p.startswith(common):
            common = common[:-1]
    return common[:common.rfind(" ") + 1] if " " in common else ""


def gerund(verb: str) -> str:
    """The -ing form of a verb for a prompt: 'feed' -> 'feeding', 'ride' -> 'riding', 'tie' ->
    'tying', 'hug' -> 'hugging', 'sit_on' -> 'sitting on' (only the first word changes)."""
    first, _, rest = verb.replace("_", " ").partition(" ")
    vowels = "aeiou"
    if len(first) == 3 and first[0] not in vowels and first[1] in vowels and first[2] not in vowels + "wxy":
        first = first + first[-1]  # one short syllable: the consonant doubles
    elif first.endswith("ie"):
        first = first[:-2] + "y"
    elif first.endswith("e") and not first.endswith(("ee", "ye", "oe")) and len(first) > 2:
        first = first[:-1]
    return " ".join(x for x in (first + "ing", rest) if x)


def parse_query(text: str, ls: LabelSpace) -> tuple[str, int, str | None]:
    """('verb', object index, prompt or None) of one query 'VERB OBJECT [= PROMPT]'; the object
    is the longest run of final words naming one of ``ls``'s objects."""
    spec, eq, prompt = text.partition("=")
    words = spec.split()
    objects = {_key(o): k for k, o in enumerate(ls.objects)}
    for cut in range(1, len(words)):
        obj = objects.get(_key(" ".join(words[cut:])))
        if obj is not None:
            if eq and not prompt.strip():
                raise ClassQueryError(f"class {text!r}: nothing after '='; give the prompt or drop the '='")
            return _key(" ".join(words[:cut])), obj, prompt.strip() or None
    if len(words) < 2:
        raise ClassQueryError(f"class {text!r}: write it as 'VERB OBJECT', e.g. 'ride {ls.objects[0]}'")
    raise ClassQueryError(f"class {text!r}: unknown object {words[-1]!r}; label space {ls.name!r} (and its "
                          f"detector) knows: {', '.join(ls.objects)}")


def read_classes_file(path, ls: LabelSpace) -> list[str]:
    """The queries of ``path``: a label-space JSON (its classes by name, with their prompts) or
    a text file of one 'VERB OBJECT [= PROMPT]' a line ('#' starts a comment)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ClassQueryError(f"--classes {path}: cannot read it ({e.strerror or e})") from e
    if text.lstrip().startswith("{"):
        try:
            other = LabelSpace.from_dict(json.loads(text), source=str(path))
        except json.JSONDecodeError as e:
            raise ClassQueryError(f"--classes {path}: not valid JSON ({e})") from e
        return [f"{other.verbs[v]} {other.objects[o]} = {p}" for (v, o), p in zip(other.hoi, other.prompts)]
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def query_labelspace(base: LabelSpace, queries, *, add: bool = False) -> LabelSpace:
    """The label space of ``queries`` (strings 'VERB OBJECT [= PROMPT]'), or with ``add`` of
    the base's classes followed by the queries it lacks (then the base's class indices, rare
    split and zero-shot splits are unchanged)."""
    queries = list(queries)
    if not queries:
        raise ClassQueryError("no class asked for: give --hoi 'VERB OBJECT' (repeatable) or --classes FILE")
    verbs = list(base.verbs)
    hoi, prompts, counts = (list(base.hoi), list(base.prompts), list(base.train_counts)) if add else ([], [], [])
    templates, prefix = _verb_templates(base), _prefix(base)
    asked: dict[tuple[int, int], str] = {}
    for q in queries:
        verb, obj, prompt = parse_query(q, base)
        if verb not in verbs:
            verbs.append(verb)
        v = verbs.index(verb)
        if (v, obj) in asked:
            raise ClassQueryError(f"class {q!r} is asked for twice (also as {asked[(v, obj)]!r})")
        asked[(v, obj)] = q
        known = base._pair_to_class.get((v, obj))
        if add and known is not None:
            continue  # the base's own class, already there
        if prompt is None:
            prompt = base.prompts[known] if known is not None else (
                templates[v].format(_object_text(base, obj)) if v in templates
                else f"{prefix}{gerund(verb)} {_object_text(base, obj)}")
        hoi.append((v, obj))
        prompts.append(prompt)
        counts.append(base.train_counts[known] if known is not None else 0)
    d = {**base.to_dict(), "schema": SCHEMA, "name": f"{base.name}:query", "verbs": verbs,
         "hoi": [list(p) for p in hoi], "train_counts": counts, "prompts": prompts,
         "zero_shot_splits": base.zero_shot_splits if add else {}}
    ls = LabelSpace.from_dict(d, source="the classes asked for")
    return replace(ls, asked=tuple(sorted(ls.class_index(v, o) for v, o in asked)))


def class_record(ls: LabelSpace, text: np.ndarray) -> dict:
    """What a predictions file says of the classes it scored: their names (verb, object),
    prompts, label space and the sha256 of their text embeddings float32 [C, D]; for a label
    space of :func:`query_labelspace`, also the classes asked for ('asked', class indices)."""
    return {"labelspace": ls.name, "labelspace_sha256": ls.fingerprint,
            "hoi": [[ls.verbs[v], ls.objects[o]] for v, o in ls.hoi], "prompts": list(ls.prompts),
            "text_sha256": hashlib.sha256(np.ascontiguousarray(text, np.float32).tobytes()).hexdigest(),
            **({"asked": list(ls.asked)} if ls.asked else {})}


def asked_classes(record: dict, index: np.ndarray) -> np.ndarray | None:
    """int64 [k]: the classes of the evaluated label space that were asked for (``record``'s
    'asked', through ``index`` from :func:`to_base_classes`), or None when the record does not say."""
    asked = record.get("asked")
    if asked is None:
        return None
    asked = np.asarray(asked, dtype=np.int64)
    if asked.ndim != 1 or len(asked) == 0 or asked.min() < 0 or asked.max() >= len(index):
        raise ClassQueryError(f"'asked' in a predictions file's classes is malformed: {record.get('asked')!r}")
    return np.unique(index[asked])


def to_base_classes(record: dict, ls: LabelSpace, source: str) -> np.ndarray:
    """int64 [C']: the class of ``ls`` of each class of a predictions file's ``record``
    (:func:`class_record`), matched by (verb, object) names; a class ``ls`` lacks is refused."""
    try:
        names = [(str(v), str(o)) for v, o in record["hoi"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ClassQueryError(f"{source}: its classes record is malformed ({e!r})") from e
    index = {(ls.verbs[v], ls.objects[o]): c for c, (v, o) in enumerate(ls.hoi)}
    missing = [f"{v} {o}" for v, o in names if (v, o) not in index]
    if missing:
        raise ClassQueryError(f"{source} scored class(es) that label space {ls.name!r} does not have: "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; evaluate it against "
                              "a label space with these classes (--labelspace FILE)")
    return np.array([index[n] for n in names], dtype=np.int64)
