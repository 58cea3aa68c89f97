"""Reading, validating and writing .pyjama files as real datasets ship them."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.pyjama import (
    Atom,
    Definition,
    PyjamaError,
    make_collection,
    read_pyjama,
    resolve_audio_path,
    write_pyjama,
)

from .conftest import write_json

MAPS_SEGMENT = {
    "schemaversion": 1.4,
    "collection": {
        "descriptiondefinition": {
            "pitchmidi": {
                "type_content": "numeric",
                "type_extent": "segment",
                "type_constraint": "free",
            },
        },
        "entry": [
            {
                "filepath": [{"value": "MAPS_MUS-alb_se3_AkPnBcht.wav"}],
                "pitchmidi": [
                    {"time": 0.5018, "duration": 0.834, "value": 36},
                    {"time": 0.5018, "duration": 0.5, "value": 60},
                ],
            }
        ],
    },
}


def bach10(version: float, rows_are_times: bool) -> dict:
    times = [0.0, 0.01, 0.02]
    rows = [[60, 61, 0], [48, 48, 48], [0, 0, 0], [36, 36, 37]]  # 4 voices x 3 times
    value = [list(c) for c in zip(*rows)] if rows_are_times else rows
    key_ext, key_cont, key_row = (
        ("typeExtent", "typeContent", "columnName")
        if version < 1.4
        else ("type_extent", "type_content", "row_name")
    )
    return {
        "schemaversion": version,
        "collection": {
            "descriptiondefinition": {
                "f0multi": {
                    key_cont: "numeric",
                    key_ext: "breakpoint",
                    key_row: ["violin", "clarinet", "saxophone", "bassoon"],
                }
            },
            "entry": [
                {
                    "filepath": [{"value": "01-AchGottundHerr.wav"}],
                    "f0multi": [{"time": times, "value": value}],
                }
            ],
        },
    }


def test_segment_example(tmp_path):
    coll = read_pyjama(write_json(tmp_path / "maps.pyjama", MAPS_SEGMENT))
    (entry,) = coll.entries
    d = entry.descriptions["pitchmidi"]
    assert d.extent == "segment" and d.content == "numeric"
    assert d.atoms[0] == Atom(value=36, time=0.5018, duration=0.834)
    assert entry.audio_path == tmp_path / "MAPS_MUS-alb_se3_AkPnBcht.wav"
    assert list(entry.by_extent("segment")) == ["pitchmidi"]


@pytest.mark.parametrize(
    "version,rows_are_times", [(1.4, False), (1.3, True), (1.2, True), (1.4, False)]
)
def test_breakpoint_both_orientations_and_spellings(tmp_path, version, rows_are_times):
    coll = read_pyjama(write_json(tmp_path / "bach10.pyjama", bach10(version, rows_are_times)))
    atom = coll.entries[0].descriptions["f0multi"].atoms[0]
    assert atom.value == [[60, 61, 0], [48, 48, 48], [0, 0, 0], [36, 36, 37]]
    assert coll.definitions["f0multi"].row_name == ["violin", "clarinet", "saxophone", "bassoon"]
    assert coll.definitions["f0multi"].type_extent == "breakpoint"


def test_square_breakpoint_follows_schema_version(tmp_path):
    times, m = [0.0, 0.1], [[60, 61], [48, 49]]
    for version, expected in ((1.4, m), (1.3, [[60, 48], [61, 49]])):
        doc = {
            "schemaversion": version,
            "collection": {
                "entry": [{"filepath": [{"value": "a.wav"}], "f0": [{"time": times, "value": m}]}]
            },
        }
        coll = read_pyjama(write_json(tmp_path / f"{version}.pyjama", doc))
        assert coll.entries[0].descriptions["f0"].atoms[0].value == expected


def test_camelcase_values_are_normalised(tmp_path):
    doc = {
        "collection": {
            "descriptiondefinition": {
                "f0": {"typeContent": "numeric", "typeExtent": "breakpointValue"},
                "genre": {
                    "typeContent": "text",
                    "typeExtent": "global",
                    "typeConstraint": "valueInDictionary",
                    "dictionary": ["a", "b"],
                    "isTable": False,
                },
            },
            "entry": [
                {
                    "filepath": [{"value": "x.wav"}],
                    "genre": [{"value": "a"}],
                    "f0": [{"time": [0.0, 0.5], "value": [440.0, 441.0]}],
                }
            ],
        }
    }
    coll = read_pyjama(write_json(tmp_path / "old.pyjama", doc))
    assert coll.definitions["f0"].type_extent == "breakpoint_value"
    assert coll.definitions["genre"].type_constraint == "value_in_dictionary"
    assert coll.definitions["genre"].flags == {"is_table": False}
    assert coll.entries[0].descriptions["f0"].atoms[0].value == [[440.0, 441.0]]
    assert list(coll.entries[0].by_extent("breakpoint")) == ["f0"]


def test_without_descriptiondefinition_extent_is_inferred(tmp_path):
    doc = {
        "schemaversion": 1.4,
        "collection": {
            "entry": [
                {
                    "filepath": [{"value": "a.wav"}],
                    "genre": [{"value": "blues"}],
                    "tag": [{"value": "guitar"}, {"value": "slow"}],
                    "chord": [{"time": 0.0, "duration": 1.5, "value": "A#:maj"}],
                    "beat": [{"time": 0.5}, {"time": 1.0}],
                    "f0": [{"time": [0.0, 0.01], "value": [[60, 61]]}],
                    "work-id": [{"value": 1}],
                }
            ]
        },
    }
    coll = read_pyjama(write_json(tmp_path / "nodef.pyjama", doc))
    got = {n: (d.extent, d.content) for n, d in coll.entries[0].descriptions.items()}
    assert got == {
        "genre": ("global", "text"),
        "tag": ("global", "text"),
        "chord": ("segment", "text"),
        "beat": ("marker", "numeric"),
        "f0": ("breakpoint", "numeric"),
        "work-id": ("global", "numeric"),
    }
    assert coll.definitions["chord"].type_extent == "segment"


def test_incomplete_definition_takes_the_rest_from_atoms(tmp_path):
    doc = {
        "collection": {
            "descriptiondefinition": {"chord": {"is_editable": True}},
            "entry": [
                {
                    "filepath": [{"value": "a.wav"}],
                    "chord": [{"time": 0.0, "duration": 1.0, "value": "C:maj"}],
                }
            ],
        }
    }
    d = read_pyjama(write_json(tmp_path / "x.pyjama", doc)).entries[0].descriptions["chord"]
    assert (d.extent, d.content) == ("segment", "text")


def test_filepath_resolution(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "174702.mp3").write_bytes(b"x")
    (tmp_path / "local.wav").write_bytes(b"x")
    assert (
        resolve_audio_path("174702", tmp_path, tmp_path / "root")
        == tmp_path / "root" / "174702.mp3"
    )
    assert resolve_audio_path("local.wav", tmp_path, tmp_path / "root") == tmp_path / "local.wav"
    assert resolve_audio_path("/abs/x.wav", tmp_path) == tmp_path.root / __import__("pathlib").Path(
        "abs/x.wav"
    )
    # nothing exists: the first candidate (under the audio root) is named in errors
    assert (
        resolve_audio_path("nope.wav", tmp_path, tmp_path / "root")
        == tmp_path / "root" / "nope.wav"
    )


def entry(fp, **descs):
    return {"filepath": [{"value": fp}], **descs}


def doc_of(*entries, definitions=None):
    c = {"entry": list(entries)}
    if definitions is not None:
        c["descriptiondefinition"] = definitions
    return {"schemaversion": 1.4, "collection": c}


GENRE_DEF = {
    "genre": {
        "type_content": "text",
        "type_extent": "global",
        "type_constraint": "value_in_dictionary",
        "dictionary": ["blues", "jazz"],
    }
}

MALFORMED = [
    (
        "{not json",
        "bad.pyjama: not valid JSON: Expecting property name enclosed in double quotes at line 1, column 2",
    ),
    ("[1, 2]", "bad.pyjama: top level must be an object, got a list"),
    ({"schemaversion": 1.4}, "bad.pyjama: 'collection' must be an object, got missing"),
    (
        {"collection": {"entry": {"a": 1}}},
        "bad.pyjama: 'collection.entry' must be a list, got an object",
    ),
    (doc_of({"genre": [{"value": "blues"}]}), "bad.pyjama: entry 0: entry has no 'filepath'"),
    (
        doc_of(
            entry(
                "a.wav",
                pitchmidi=[
                    {"time": 0.1, "duration": 1, "value": 60},
                    {"time": 0.5, "duration": 1, "value": 60},
                    {"time": 0.7, "duration": 1, "value": 62},
                    {"time": 0.9, "value": 64},
                ],
            ),
            definitions={"pitchmidi": {"type_content": "numeric", "type_extent": "segment"}},
        ),
        "bad.pyjama: entry 0 (a.wav): 'pitchmidi' atom 3: segment needs 'duration'",
    ),
    (
        doc_of(
            entry("a.wav", beat=[{"value": 1}]), definitions={"beat": {"type_extent": "marker"}}
        ),
        "bad.pyjama: entry 0 (a.wav): 'beat' atom 0: marker needs 'time'",
    ),
    (
        doc_of(entry("a.wav", chord=[{"time": -1.0, "duration": 1.0, "value": "C"}])),
        "bad.pyjama: entry 0 (a.wav): 'chord' atom 0: 'time' must be finite and >= 0, got -1.0",
    ),
    (
        doc_of(entry("a.wav", f0=[{"time": [0.0, 0.1, 0.2], "value": [[60, 61], [62, 63]]}])),
        "bad.pyjama: entry 0 (a.wav): 'f0' atom 0: breakpoint 'value' is 2x2, but 'time' has 3 points",
    ),
    (
        doc_of(entry("a.wav", genre=[{"value": "metal"}]), definitions=GENRE_DEF),
        "bad.pyjama: entry 0 (a.wav): 'genre' atom 0: label 'metal' is not in the definition's dictionary (2 labels)",
    ),
    (
        doc_of(entry("a.wav"), entry("a.wav")),
        "bad.pyjama: entry 1 (a.wav): duplicate filepath, already used by entry 0",
    ),
    (
        doc_of(entry("a.wav", genre={"value": "blues"})),
        "bad.pyjama: entry 0 (a.wav): 'genre': must be a list of atoms, got an object",
    ),
    (
        doc_of(entry("a.wav"), definitions={"chord": {"type_extent": "interval"}}),
        "bad.pyjama: 'chord': definition: type_extent 'interval' is not one of global, marker, segment, breakpoint, breakpoint_time, breakpoint_value",
    ),
    (
        doc_of(
            entry("a.wav", bpm=[{"value": "fast"}]),
            definitions={"bpm": {"type_content": "numeric"}},
        ),
        "bad.pyjama: entry 0 (a.wav): 'bpm' atom 0: value must be a number (global, numeric), got 'fast'",
    ),
    (
        doc_of(entry("a.wav", f0=[{"time": [0.0, 0.2, 0.1], "value": [[60, 61, 62]]}])),
        "bad.pyjama: entry 0 (a.wav): 'f0' atom 0: breakpoint 'time' must not decrease",
    ),
    (
        doc_of(entry("a.wav", genre=[{"value": "jazz", "label": "x"}])),
        "bad.pyjama: entry 0 (a.wav): 'genre' atom 0: unknown atom field(s) ['label']; allowed: value, time, duration, confidence, comment, start_freq, end_freq",
    ),
    (
        doc_of({"filepath": [{"value": ""}]}),
        "bad.pyjama: entry 0: 'filepath' must be one atom with a non-empty string 'value'",
    ),
    (
        doc_of(
            entry("a.wav", pitch=[{"value": 200}]),
            definitions={"pitch": {"type_content": "numeric", "dictionary": [0, 127]}},
        ),
        "bad.pyjama: entry 0 (a.wav): 'pitch' atom 0: value 200 is outside the definition's range [0, 127]",
    ),
]


@pytest.mark.parametrize("doc,message", MALFORMED, ids=[f"m{i}" for i in range(len(MALFORMED))])
def test_malformed_file_gets_its_own_precise_message(tmp_path, doc, message):
    path = tmp_path / "bad.pyjama"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(PyjamaError) as err:
        read_pyjama(path)
    assert str(err.value) == message


def test_missing_file_is_named(tmp_path):
    with pytest.raises(PyjamaError, match=r"nope.pyjama: file not found"):
        read_pyjama(tmp_path / "nope.pyjama")


def test_all_problems_collected_and_skip_mode(tmp_path):
    doc = doc_of(
        entry("a.wav", genre=[{"value": "blues"}]),
        entry("b.wav", genre=[{"value": "metal"}]),
        {"genre": [{"value": "jazz"}]},
        entry("c.wav", genre=[{"value": "jazz"}]),
        entry("a.wav", genre=[{"value": "jazz"}]),
        definitions=GENRE_DEF,
    )
    path = write_json(tmp_path / "genre.pyjama", doc)
    with pytest.raises(PyjamaError) as err:
        read_pyjama(path)
    assert len(err.value.problems) == 3
    assert str(err.value).startswith("3 problem(s) in pyjama:\n")
    assert [p.entry for p in err.value.problems] == [1, 2, 4]
    coll = read_pyjama(path, on_error="skip")
    assert [e.filepath for e in coll.entries] == ["a.wav", "c.wav"]
    assert coll.skipped == [1, 2, 4]
    assert [e.index for e in coll.entries] == [0, 3]


def test_written_file_is_schema_1_4_and_reads_back_identically(tmp_path):
    src = read_pyjama(write_json(tmp_path / "old.pyjama", bach10(1.2, rows_are_times=True)))
    out = write_pyjama(src, tmp_path / "new.pyjama")
    raw = json.loads(out.read_text())
    assert raw["schemaversion"] == 1.4
    assert "row_name" in raw["collection"]["descriptiondefinition"]["f0multi"]
    assert raw["collection"]["entry"][0]["f0multi"][0]["value"][0] == [
        60,
        61,
        0,
    ]  # (n_dims, n_times)
    again = read_pyjama(out)
    assert again.entries == src.entries
    assert again.definitions == src.definitions


# -- property: any collection the writer writes, the reader reads back identically ------------

labels = st.text(alphabet="abcdefgh:#", min_size=1, max_size=6)
seconds = st.floats(min_value=0, max_value=1000, allow_nan=False, allow_infinity=False)


@st.composite
def collections(draw):
    n_dims = draw(st.integers(1, 3))
    vocab = sorted(set(draw(st.lists(labels, min_size=1, max_size=4))))
    definitions = {
        "genre": Definition("text", "global", "value_in_dictionary", vocab),
        "tag": Definition("text", "global", "free"),
        "chord": Definition("text", "segment", "free"),
        "pitchmidi": Definition("numeric", "segment", "free"),
        "onset": Definition("numeric", "marker", "free"),
        "f0": Definition(
            "numeric", "breakpoint", "free", row_name=[f"v{i}" for i in range(n_dims)]
        ),
        "work-id": Definition("numeric", "global", "free"),
    }
    items = []
    n = draw(st.integers(1, 5))
    names = draw(
        st.lists(
            st.text(alphabet="abcxyz0123", min_size=1, max_size=8),
            min_size=n,
            max_size=n,
            unique=True,
        )
    )
    for name in names:
        d = {"genre": [Atom(value=draw(st.sampled_from(vocab)))]}
        if draw(st.booleans()):
            d["tag"] = [Atom(value=v) for v in draw(st.lists(labels, min_size=1, max_size=3))]
        if draw(st.booleans()):
            d["chord"] = [Atom(value=draw(labels), time=draw(seconds), duration=draw(seconds))]
        if draw(st.booleans()):
            d["pitchmidi"] = [
                Atom(
                    value=draw(st.integers(0, 127)),
                    time=draw(seconds),
                    duration=draw(seconds),
                    confidence=draw(st.none() | st.floats(0, 1)),
                )
                for _ in range(draw(st.integers(1, 3)))
            ]
        if draw(st.booleans()):
            d["onset"] = [Atom(time=draw(seconds), comment=draw(st.none() | labels))]
        if draw(st.booleans()):
            n_t = draw(st.integers(1, 4))
            times = sorted(draw(st.lists(seconds, min_size=n_t, max_size=n_t)))
            vals = [
                [draw(st.floats(-1, 127, allow_nan=False)) for _ in range(n_t)]
                for _ in range(n_dims)
            ]
            d["f0"] = [Atom(value=vals, time=times)]
        d["work-id"] = [Atom(value=draw(st.integers(0, 10)))]
        items.append((f"{name}.wav", d))
    return make_collection(items, definitions)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(coll=collections())
def test_roundtrip_property(tmp_path, coll):
    out = write_pyjama(coll, tmp_path / "gen.pyjama")
    back = read_pyjama(out)
    assert [e.filepath for e in back.entries] == [e.filepath for e in coll.entries]
    assert [e.descriptions for e in back.entries] == [e.descriptions for e in coll.entries]
    assert back.definitions == coll.definitions


def test_atoms_checked_a_field_at_a_time_read_as_checked_one_by_one(tmp_path, monkeypatch):
    """Valid segments, markers and labels are checked over whole columns (real datasets have
    millions of notes); they read back exactly as the atom-by-atom check reads them."""
    from common.pyjama import parse_pyjama
    from common.pyjama import read as reader

    entries = [
        {"filepath": [{"value": f"a{i}.wav"}], "genre": [{"value": "jazz"}],
         "tag": [{"value": "x"}, {"value": "y", "confidence": 0.5}],
         "pitchmidi": [{"time": 0.5 * k, "duration": 0.25, "value": 60 + k} for k in range(9)],
         "beat": [{"time": 0.5, "value": "up"}, {"time": 1, "value": "down"}],
         "onset": [{"time": 0.2}, {"time": 0.7}], "rating": [{"value": 3}]}
        for i in range(3)
    ]  # fmt: skip
    doc = {"collection": {"entry": entries,
                          "descriptiondefinition": {"rating": {"type_content": "numeric",
                                                               "type_extent": "global",
                                                               "dictionary": [0, 5]}}}}  # fmt: skip
    fast = parse_pyjama(doc, source=tmp_path / "d.pyjama")
    monkeypatch.setattr(reader, "_columns_valid", lambda atoms, definition: None)  # in read
    slow = parse_pyjama(doc, source=tmp_path / "d.pyjama")
    for a, b in zip(fast.entries, slow.entries):
        assert a.descriptions == b.descriptions
    assert fast.entries[0].descriptions["pitchmidi"].column("value").tolist() == list(range(60, 69))
